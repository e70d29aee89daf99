"""Resume is exact: a run stopped at a checkpoint (cleanly or by SIGKILL) and resumed ends bitwise where an
uninterrupted run ends — weights, optimizer state, EMA, history and logs.

Everything is real: in-process ``vaekit.train``, ``python -m vaekit`` subprocesses, safetensors and ``optim.pt``
read back from disk. The tiny config has 360 training samples and batch 32: 11 batches per epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vaekit

BATCHES_PER_EPOCH = 11  # 360 train samples // batch 32

# (id, config sections, k): the straight run trains 2k steps with ckpt_every=k; k falls mid-epoch and the
# resumed half crosses an epoch boundary.
VARIANTS = {
    "plain": ({"train": {"max_steps": 14, "ckpt_every": 7}}, 7),
    # grad_accum=2: 6 optimizer steps per epoch (the last one has a single micro-batch); step 4 = batch 8 of 11.
    "grad_accum2": ({"train": {"max_steps": 8, "ckpt_every": 4, "grad_accum": 2}}, 4),
    "ema": ({"train": {"max_steps": 14, "ckpt_every": 7, "ema": {"enabled": True, "decay": 0.9}}}, 7),
}


# ----------------------------------------------------------------------------------------- helpers
def step_of(ckpt: Path) -> int:
    return int(ckpt.name.removeprefix("step_"))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted(found, key=step_of)


def assert_same_tree(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and scalars are identical (tensors bitwise, torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max |Δ| {(a.double() - b.double()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_weights(a: Path, b: Path) -> None:
    assert_same_tree(load_file(str(a)), load_file(str(b)), a.name)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record minus the wall-clock fields, which legitimately differ between runs."""
    return {k: v for k, v in record.items() if k not in ("time", "samples_per_sec")}


def truncate_after(run_dir: Path, k: int) -> None:
    """Make a finished run look like one that died right after checkpoint ``k``."""
    for ckpt in complete_checkpoints(run_dir):
        if step_of(ckpt) > k:
            shutil.rmtree(ckpt)
    (run_dir / "model.safetensors").unlink()


# Children run single-threaded: two of them share the 2 cores, and OpenMP spin-waits collapse when oversubscribed.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_and_kill(tmp_path: Path, configs: dict[str, Path], run_dir: Path, kill_at: int,
                   wait_s: float = 180) -> None:
    """Train ``configs["killed"]`` and ``configs["straight"]`` side by side in subprocesses (stderr in
    ``tmp_path/{name}.err``); SIGKILL the first once ``run_dir`` holds a complete checkpoint at step >= ``kill_at``,
    let the second finish, and check the killed run had not finished."""
    logs = {name: open(tmp_path / f"{name}.err", "w") for name in configs}  # noqa: SIM115 (closed below)
    procs = {name: subprocess.Popen([sys.executable, "-m", "vaekit", "train", str(cfg)], stdout=subprocess.DEVNULL,
                                    stderr=logs[name], env=CHILD_ENV) for name, cfg in configs.items()}
    try:
        killed, deadline = procs["killed"], time.monotonic() + wait_s
        while True:
            ckpts = complete_checkpoints(run_dir) if (run_dir / "checkpoints").is_dir() else []
            if ckpts and step_of(ckpts[-1]) >= kill_at:
                killed.send_signal(signal.SIGKILL)
                break
            assert killed.poll() is None, (
                f"training ended (rc {killed.returncode}) before it could be killed: "
                f"{(tmp_path / 'killed.err').read_text()[-2000:]}"
            )
            assert time.monotonic() < deadline, f"no checkpoint >= step {kill_at} within {wait_s:g} s"
            time.sleep(0.01)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert procs["straight"].wait(timeout=wait_s + 60) == 0, (tmp_path / "straight.err").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for fh in logs.values():
            fh.close()
    assert not (run_dir / "model.safetensors").exists(), "the killed run had already finished"


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def resumed_pair(tmp_path_factory: pytest.TempPathFactory):
    """``resumed_pair(variant)`` → (straight result, resumed result, k); each variant trained once per module."""
    root = tmp_path_factory.mktemp("resume")
    cache: dict[str, tuple[Any, Any, int]] = {}

    def make(variant: str):
        if variant not in cache:
            sections, k = VARIANTS[variant]
            straight = vaekit.train(tiny_tree(root, f"{variant}-straight", **sections))
            copy = root / f"{variant}-resumed"
            shutil.copytree(straight.run_dir, copy)
            truncate_after(copy, k)
            resumed = vaekit.train(resume=copy)
            cache[variant] = (straight, resumed, k)
        return cache[variant]

    return make


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_mid_epoch_matches_uninterrupted_run(resumed_pair, variant: str) -> None:
    straight, resumed, k = resumed_pair(variant)
    a, b = straight.run_dir, resumed.run_dir

    # the checkpoint resumed from really is mid-epoch
    state = json.loads((b / "checkpoints" / f"step_{k:08d}" / "state.json").read_text())
    assert state["step"] == k
    assert 0 < state["batch_in_epoch"] < BATCHES_PER_EPOCH, state["batch_in_epoch"]

    # exported weights, and every file of the final checkpoint, bitwise
    assert_same_weights(a / "model.safetensors", b / "model.safetensors")
    last_a, last_b = complete_checkpoints(a)[-1], complete_checkpoints(b)[-1]
    assert last_a.name == last_b.name
    assert {p.name for p in last_a.iterdir()} == {p.name for p in last_b.iterdir()}
    for weights in last_a.glob("*.safetensors"):  # model (+ ema)
        assert_same_weights(weights, last_b / weights.name)
    if variant == "ema":
        assert (last_a / "ema.safetensors").is_file()
    optim_a = torch.load(last_a / "optim.pt", weights_only=True)
    optim_b = torch.load(last_b / "optim.pt", weights_only=True)
    assert optim_a["generator"]["optimizer"]["state"], "the optimizer state is empty: nothing was compared"
    assert_same_tree(optim_a, optim_b, "optim.pt")

    # the run's history (per-epoch train totals, validations) and its validation log are identical too
    assert_same_tree(straight.history, resumed.history, "history")
    val_a = [without_timing(r) for r in read_jsonl(a / "metrics.jsonl") if r["split"] == "val"]
    val_b = [without_timing(r) for r in read_jsonl(b / "metrics.jsonl") if r["split"] == "val"]
    assert val_a and val_a == val_b


def test_resume_logs_the_same_train_metrics_as_uninterrupted_run(resumed_pair) -> None:
    # log.every=4 does not divide ckpt_every=7: the checkpoint at step 7 falls inside a logging window
    straight, resumed, _ = resumed_pair("plain")
    train_a = [without_timing(r) for r in read_jsonl(straight.run_dir / "metrics.jsonl") if r["split"] == "train" and "kind" not in r]
    train_b = [without_timing(r) for r in read_jsonl(resumed.run_dir / "metrics.jsonl") if r["split"] == "train" and "kind" not in r]
    assert [r["step"] for r in train_a] == [4, 8, 12]
    assert train_a == train_b


def test_resume_ignores_leftover_tmp_checkpoint(resumed_pair, tmp_path: Path) -> None:
    straight, _, k = resumed_pair("plain")
    run = tmp_path / "crashed"
    shutil.copytree(straight.run_dir, run)
    truncate_after(run, k)
    # a crash while writing later checkpoints: half-written directories whose names sort after step k
    for step in (k + 4, k + 6):
        tmp = run / "checkpoints" / f"step_{step:08d}.tmp"
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"\x00\x01truncated")
        (tmp / "state.json").write_text(json.dumps({"step": step, "epoch": 0, "batch_in_epoch": 3}))

    result = vaekit.train(resume=run)

    assert_same_weights(straight.run_dir / "model.safetensors", run / "model.safetensors")
    assert result.history == straight.history
    # the leftover at a step the resumed run checkpoints again was replaced by a complete checkpoint
    assert (run / "checkpoints" / f"step_{k + 4:08d}" / "optim.pt").is_file()
    assert not (run / "checkpoints" / f"step_{k + 4:08d}.tmp").exists()


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # Enough steps that the process is still training when checkpoint 20 appears. log.every=1: no logging
    # window spans a checkpoint, so the whole log must match the reference run's.
    sections = {"train": {"max_steps": 80, "ckpt_every": 10}, "log": {"every": 1}}
    configs = {}
    for name in ("killed", "straight"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(tiny_tree(root, name, **sections)))
    run_dir, straight_dir = root / "killed", root / "straight"

    # the uninterrupted reference trains beside the run that gets killed
    train_and_kill(tmp_path, configs, run_dir, 20)
    killed_at = step_of(complete_checkpoints(run_dir)[-1])
    assert 20 <= killed_at < 80

    resume = subprocess.run(
        [sys.executable, "-m", "vaekit", "train", "--resume", str(run_dir)],
        capture_output=True, text=True, timeout=240, env=CHILD_ENV,
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert resume.stdout.strip().splitlines()[-1] == str(run_dir)
    assert f"resuming at step {killed_at}" in resume.stderr

    assert_same_weights(straight_dir / "model.safetensors", run_dir / "model.safetensors")

    # records logged after the checkpoint by the killed process were dropped, not duplicated
    records = read_jsonl(run_dir / "metrics.jsonl")
    keys = [(r["step"], r["split"]) for r in records if r["split"] == "train" and "kind" not in r]
    assert len(keys) == len(set(keys)), sorted({k for k in keys if keys.count(k) > 1})
    assert [r["step"] for r in records if r["split"] == "train" and "kind" not in r] == list(range(1, 81))
    reference = [without_timing(r) for r in read_jsonl(straight_dir / "metrics.jsonl")]
    assert [without_timing(r) for r in records] == reference
    # TensorBoard too: the killed process's events after the checkpoint are purged on reload
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == list(range(1, 81))
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in reference if r["split"] == "train" and "kind" not in r], rel=1e-6)
