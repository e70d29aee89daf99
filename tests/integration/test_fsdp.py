"""``train.strategy=fsdp`` on 2 CPU processes (real torchrun, gloo; FSDP2's ``fully_shard``, as Accelerate
enables FSDP only on accelerators) trains the same weights as DDP, writes full-weight checkpoints and exports,
and resumes bitwise with Adam, whose moment estimates are sharded too (saved in full, sharded again on load)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file

SECTIONS = {
    "optim": {"name": "adam", "lr": 1e-4},
    "model": {"norm": "group"},
    "train": {"batch_size": 32, "max_steps": 6, "ckpt_every": 3},
    "log": {"every": 2, "samples": True, "num_samples": 4},  # sample grids: a forward on the main process only
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "vaekit", "train", *args]
    path = os.pathsep.join(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # absolute: the processes run in cwd
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    procs = []
    for strategy in ("ddp", "fsdp"):
        tree = tiny_tree(root / "runs", strategy, **SECTIONS)
        tree["train"]["strategy"] = strategy
        (root / f"{strategy}.yaml").write_text(yaml.safe_dump(tree))
        procs.append(torchrun([str(root / f"{strategy}.yaml")], root))
    for proc in procs:
        finish(proc)
    return root / "runs"


def test_fsdp_trains_the_same_weights_as_ddp(runs: Path) -> None:
    for rel in ("model.safetensors", "checkpoints/step_00000003/model.safetensors"):
        ddp, fsdp = load_file(str(runs / "ddp" / rel)), load_file(str(runs / "fsdp" / rel))
        assert set(ddp) == set(fsdp)
        for key in ddp:  # full (unsharded) tensors in both
            assert fsdp[key].shape == ddp[key].shape, key
            torch.testing.assert_close(fsdp[key], ddp[key], atol=1e-6, rtol=0, msg=lambda m, k=key, r=rel: f"{r} {k}: {m}")
    assert len(list((runs / "fsdp" / "samples").glob("*.png"))) == len(list((runs / "ddp" / "samples").glob("*.png")))


def test_fsdp_resumes_bitwise_from_a_full_state_checkpoint(runs: Path) -> None:
    copy = runs / "fsdp-resumed"
    shutil.copytree(runs / "fsdp", copy)
    shutil.rmtree(copy / "checkpoints" / "step_00000006")
    (copy / "model.safetensors").unlink()
    finish(torchrun(["--resume", str(copy)], runs))
    a, b = load_file(str(runs / "fsdp" / "model.safetensors")), load_file(str(copy / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
