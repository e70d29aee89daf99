"""Shards written by ``vaekit shard`` from a tiny image folder train, and resume exactly after SIGKILL with one
process and with two (torchrun over gloo): the webdataset source is indexed, so its order and resume point are
those of a folder (one global permutation per epoch, disjoint per-process slices, the exact global batch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_tree
from PIL import Image
from safetensors.torch import load_file

import vaekit
from vaekit.cli import main as cli_main

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def image_folder(root: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / ("cats" if i % 2 else "dogs")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("shards")
    folder = image_folder(root / "images")
    assert cli_main(["shard", str(folder), "--out", str(root / "wds"), "--samples-per-shard", "20",
                     "--labels", "folder"]) == 0
    assert sorted(p.name for p in (root / "wds").iterdir()) == [
        "dataset.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000003.tar"]
    return f"{root}/wds/shard-{{000000..000003}}.tar"


def shard_config(root: Path, name: str, pattern: str, **sections) -> dict:
    data = {"source": "webdataset", "path": pattern, "image_size": 32, "crop": "random", "flip": True}
    return tiny_tree(root, name, data=data, **sections)


def test_shards_written_by_vaekit_shard_train_with_labels(shards: str, tmp_path: Path) -> None:
    result = vaekit.train(shard_config(tmp_path, "wds", shards, train={"max_steps": 3, "batch_size": 8}))
    assert (result.run_dir / "model.safetensors").is_file()
    from vaekit.config.load import load_config
    from vaekit.data import build_data

    bundle = build_data(load_config(None, ["data.source=webdataset", f"data.path={shards}"]).data, 0)
    assert bundle.info.n_train + bundle.info.n_val == 64
    assert bundle.info.meta["classes"] == ["cats", "dogs"]
    assert {int(bundle.val[i]["y"]) for i in range(len(bundle.val))} <= {0, 1}


def _launch(cfg: Path, procs: int, err, resume: bool = False) -> subprocess.Popen:
    cmd = ["-m", "vaekit", "train"] + (["--resume", str(cfg)] if resume else [str(cfg)])
    if procs > 1:
        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        cmd = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(port), *cmd]
    return subprocess.Popen([sys.executable, *cmd], stdout=subprocess.DEVNULL, stderr=err, env=CHILD_ENV,
                            start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every descendant (torchrun starts its workers in new sessions)."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(tree[1:], timeout=30)


def _checkpoints(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in ckpts.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


@pytest.mark.parametrize("procs", [1, 2])
def test_shards_resume_after_sigkill_matches_uninterrupted_run(shards: str, tmp_path: Path, procs: int) -> None:
    sections = {"train": {"max_steps": 60, "ckpt_every": 10, "batch_size": 16}}
    root = tmp_path / "runs"
    configs = {}
    for name in ("killed", "straight"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(shard_config(root, name, shards, **sections)))
    logs = {name: open(tmp_path / f"{name}.err", "w") for name in configs}  # noqa: SIM115 (closed below)
    running = {name: _launch(cfg, procs, logs[name]) for name, cfg in configs.items()}
    run_dir = root / "killed"
    try:
        killed, deadline = running["killed"], time.monotonic() + 240
        while not (_checkpoints(run_dir) and _checkpoints(run_dir)[-1] >= 20):
            assert killed.poll() is None, f"ended before the kill: {(tmp_path / 'killed.err').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint >= 20 in time"
            time.sleep(0.01)
        kill_tree(killed)  # torchrun and its workers (in sessions of their own) at once
        assert running["straight"].wait(timeout=300) == 0, (tmp_path / "straight.err").read_text()[-3000:]
    finally:
        for proc in running.values():
            if proc.poll() is None:
                kill_tree(proc)
        for fh in logs.values():
            fh.close()
    assert not (run_dir / "model.safetensors").exists(), "the killed run had already finished"
    killed_at = _checkpoints(run_dir)[-1]
    with open(tmp_path / "resume.err", "w") as err:
        resumed = _launch(run_dir, procs, err, resume=True)
        assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.err").read_text()[-3000:]
    assert f"resuming at step {killed_at}" in (tmp_path / "resume.err").read_text()
    a, b = load_file(str(root / "straight" / "model.safetensors")), load_file(str(run_dir / "model.safetensors"))
    assert set(a) == set(b)
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after resume ({procs} process(es))"
