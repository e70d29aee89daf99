"""Data parallelism on CPU: ``torchrun --nproc_per_node 2`` trains like one process with the same global batch,
and the run's files are written once.

Real torchrun (``python -m torch.distributed.run``) processes over gloo; SGD (Adam would amplify the float noise
of a different gradient reduction order) and GroupNorm (BatchNorm statistics are per process).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file

from vaekit.data import ArraySource, BatchLoader

MAX_STEPS = 14  # crosses the epoch boundary at step 11
SECTIONS = {
    # lr 1e-4: small enough that 14 SGD steps stay in the regime where reduction-order noise does not grow
    "optim": {"name": "sgd", "lr": 1e-4},
    "model": {"norm": "group"},
    "train": {"batch_size": 32, "max_steps": MAX_STEPS, "ckpt_every": 7},
    "log": {"every": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics_only(record: dict[str, Any]) -> dict[str, float]:
    skip = {"time", "samples_per_sec", "step", "epoch", "stage_index"}
    return {k: v for k, v in record.items() if k not in skip and isinstance(v, float)}


def _launch(root: Path, env: dict[str, str]) -> dict[int, subprocess.CompletedProcess]:
    """torchrun with 2 processes and with 1, side by side; returns the finished processes."""
    procs = {}
    for n in (2, 1):
        cfg_file = root / f"ddp{n}.yaml"
        cfg_file.write_text(yaml.safe_dump(tiny_tree(root / "runs", f"ddp{n}", **SECTIONS)))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
            "--master_port", str(free_port()), "-m", "vaekit", "train", str(cfg_file),
        ]
        procs[n] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    done = {}
    try:
        for n, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            done[n] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """The same config under torchrun with 2 processes and with 1, launched side by side.

    A rendezvous port picked free can be taken by the time torchrun binds it: such a launch is retried."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _attempt in range(3):
        root = tmp_path_factory.mktemp("ddp")
        done = _launch(root, env)
        if all(p.returncode == 0 for p in done.values()):
            break
        if not any("address already in use" in p.stderr.lower() or "eaddrinuse" in p.stderr.lower() for p in done.values()):
            break
    for n, proc in done.items():
        assert proc.returncode == 0, f"{n} process(es): rc {proc.returncode}\n{proc.stderr[-4000:]}"
    return {n: {"run_dir": root / "runs" / f"ddp{n}", "stdout": p.stdout, "stderr": p.stderr} for n, p in done.items()}


def test_two_processes_train_like_one_with_the_same_global_batch(runs) -> None:
    one, two = runs[1]["run_dir"], runs[2]["run_dir"]
    for rel in ("model.safetensors", "checkpoints/step_00000007/model.safetensors"):
        a, b = load_file(str(one / rel)), load_file(str(two / rel))
        assert set(a) == set(b)
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=lambda m, n=name, r=rel: f"{r} {n}: {m}")
    # the per-step training losses, reduced over both processes, are those of the single process
    train1 = [r for r in read_jsonl(one / "metrics.jsonl") if r["split"] == "train" and "kind" not in r]
    train2 = [r for r in read_jsonl(two / "metrics.jsonl") if r["split"] == "train" and "kind" not in r]
    assert [r["step"] for r in train2] == [r["step"] for r in train1] == list(range(2, MAX_STEPS + 1, 2))
    for r1, r2 in zip(train1, train2, strict=True):
        for key in ("loss", "recon", "kl", "mse"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), (r1["step"], key)
    # validation's KL is a deterministic function of the weights: it must agree across world sizes
    val1 = [r for r in read_jsonl(one / "metrics.jsonl") if r["split"] == "val"]
    val2 = [r for r in read_jsonl(two / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in val2] == [r["step"] for r in val1] == [11, MAX_STEPS]
    for r1, r2 in zip(val1, val2, strict=True):
        assert r2["kl"] == pytest.approx(r1["kl"], rel=1e-5)
        assert r2["active_units"] == r1["active_units"]


def test_two_processes_validate_like_one(runs) -> None:
    val1 = [r for r in read_jsonl(runs[1]["run_dir"] / "metrics.jsonl") if r["split"] == "val"]
    val2 = [r for r in read_jsonl(runs[2]["run_dir"] / "metrics.jsonl") if r["split"] == "val"]
    assert len(val1) == len(val2) == 2
    for r1, r2 in zip(val1, val2, strict=True):
        m1, m2 = metrics_only(r1), metrics_only(r2)
        assert set(m1) == set(m2)
        for key in m1:
            assert m2[key] == pytest.approx(m1[key], rel=1e-5), (r1["step"], key)


def test_two_processes_write_run_files_once(runs) -> None:
    one, two = runs[1], runs[2]
    run_dir = two["run_dir"]
    # one process announces the run directory and prints it as the command's result
    assert two["stderr"].count("run directory:") == 1, two["stderr"]
    assert two["stdout"].strip().splitlines() == [str(run_dir)]
    # metrics.jsonl: each record once, the same records as the single-process run
    lines = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(lines) == len(set(lines))
    keys = [(r["step"], r["split"], r.get("kind")) for r in map(json.loads, lines)]
    assert len(keys) == len(set(keys)), keys
    assert keys == [(r["step"], r["split"], r.get("kind")) for r in read_jsonl(one["run_dir"] / "metrics.jsonl")]
    # the same checkpoints, each complete, with every rank's RNG state and nothing half-written
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == sorted(p.name for p in (one["run_dir"] / "checkpoints").iterdir())
    assert ckpts == ["step_00000007", "step_00000011", "step_00000014"]
    for name in ckpts:
        files = {p.name for p in (run_dir / "checkpoints" / name).iterdir()}
        assert {"model.safetensors", "optim.pt", "state.json", "rng_rank0.pt", "rng_rank1.pt"} <= files, files
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == MAX_STEPS


def test_batch_loader_reshuffles_each_epoch_and_ranks_partition_it() -> None:
    n, batch = 100, 32
    source = ArraySource(torch.arange(n, dtype=torch.float32).unsqueeze(1))  # x[i] = i

    def epoch_samples(rank: int, world: int, epoch: int, drop_last: bool) -> list[list[int]]:
        loader = BatchLoader(source, batch, shuffle=True, drop_last=drop_last, seed=3, rank=rank, world_size=world)
        loader.set_epoch(epoch)
        return [b["x"][:, 0].long().tolist() for b in loader]

    orders = []
    for epoch in (0, 1):
        single = epoch_samples(0, 1, epoch, drop_last=False)
        r0, r1 = epoch_samples(0, 2, epoch, False), epoch_samples(1, 2, epoch, False)
        assert len(r0) == len(r1) == len(single) == 4  # every rank yields every global batch
        union = [i for b0, b1 in zip(r0, r1, strict=True) for i in b0 + b1]
        assert sorted(union) == list(range(n))  # each sample exactly once per epoch
        # rank r holds a contiguous slice of each global batch: together the ranks see the single process's batches
        assert [b0 + b1 for b0, b1 in zip(r0, r1, strict=True)] == single
        assert [len(b) for b in r0[:3]] == [16, 16, 16]
        orders.append(union)
        # drop_last: the partial global batch is dropped on both ranks alike; still no sample twice
        d0, d1 = epoch_samples(0, 2, epoch, True), epoch_samples(1, 2, epoch, True)
        kept = [i for b0, b1 in zip(d0, d1, strict=True) for i in b0 + b1]
        assert len(kept) == len(set(kept)) == 96
    assert orders[0] != orders[1], "the permutation must change between epochs"
    # and it is a function of (seed, epoch) only: asking again gives the same order
    assert [i for b in epoch_samples(0, 1, 1, False) for i in b] == orders[1]
