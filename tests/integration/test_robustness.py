"""Hardening: concurrent runs, kills at awkward moments, damaged or hostile checkpoints, unwritable and full disks,
data-worker errors and a stopped process. Each failure is one ``vaekit: <label>: <line>`` (exit 2) or is survived
with a warning, and whatever survives resumes bitwise like an uninterrupted run.

Everything is real: in-process ``vaekit.train`` / ``vaekit.cli.main``, ``python -m vaekit`` and torchrun
subprocesses, files damaged on disk. The tiny config has 360 training samples and batch 32: 11 batches per epoch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
import yaml
from conftest import tiny_tree
from PIL import Image
from safetensors.torch import load_file

import vaekit
from vaekit import cli
from vaekit.engine import checkpoint as ckpt_mod
from vaekit.engine.checkpoint import CheckpointManager

SRC = Path(__file__).resolve().parents[2] / "src"
# Children run single-threaded (two of them share the 2 cores) and import this checkout's vaekit.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}


# ----------------------------------------------------------------------------------------- helpers
def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_").split(".")[0])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every ``step_*`` entry (complete or not, with or without a suffix), by name."""
    return sorted((run_dir / "checkpoints").glob("step_*"))


def complete(run_dir: Path) -> list[Path]:
    return [p for p in checkpoint_dirs(run_dir) if "." not in p.name and (p / "state.json").is_file()]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("time", "samples_per_sec")} for r in records]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{a.name}: {key} differs"


def assert_same_run(straight: Path, resumed: Path) -> None:
    """Exported weights bitwise and the whole metrics.jsonl (minus wall-clock fields) identical."""
    assert_same_weights(straight / "model.safetensors", resumed / "model.safetensors")
    assert without_timing(read_jsonl(resumed / "metrics.jsonl")) == without_timing(read_jsonl(straight / "metrics.jsonl"))


def assert_loadable(ckpt: Path) -> None:
    """A checkpoint reads back: state.json, every weights file, optim.pt and the RNG file (weights_only)."""
    assert json.loads((ckpt / "state.json").read_text())["step"] == step_of(ckpt)
    for weights in ckpt.glob("*.safetensors"):
        load_file(str(weights))
    for file in ("optim.pt", "rng_rank0.pt"):
        torch.load(ckpt / file, weights_only=True)


def strip_finished(run_dir: Path, after: int | None = None) -> None:
    """Make a finished run look like one killed after checkpoint ``after`` (None: before any checkpoint)."""
    for ckpt in checkpoint_dirs(run_dir):
        if after is None or step_of(ckpt) > after:
            shutil.rmtree(ckpt)
    for name in ("model.safetensors", "summary.json", "model_config.json"):
        (run_dir / name).unlink(missing_ok=True)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """``vaekit.cli.main(argv)`` in this process: (exit code, the stderr lines starting with ``vaekit:``)."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return code, [line for line in err.splitlines() if line.startswith("vaekit:")]


def write_config(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def vaekit_proc(*args: str, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """``python -m vaekit ARGS`` in the background, stderr to ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "vaekit", *args], stdout=subprocess.DEVNULL, stderr=fh,
                                env=CHILD_ENV, cwd=cwd)


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            text = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {text}")
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def error_lines(log: Path) -> list[str]:
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.startswith("vaekit:")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory):
    """``straight(name, **sections)`` → the run dir of an uninterrupted run, trained once per module."""
    root = tmp_path_factory.mktemp("straight")
    cache: dict[str, Path] = {}

    def make(name: str, **sections: Any) -> Path:
        if name not in cache:
            cache[name] = vaekit.train(tiny_tree(root, name, **sections)).run_dir
        return cache[name]

    return make


# ------------------------------------------------------------------- 6. one process per run directory
def test_same_run_name_started_together_one_trains_the_other_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", tiny_tree(tmp_path / "runs", "same", train={"max_steps": 30, "ckpt_every": 5}))
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    procs = [vaekit_proc("train", str(cfg), log=log) for log in logs]
    try:
        codes = [proc.wait(timeout=240) for proc in procs]
    finally:
        stop(*procs)
    assert sorted(codes) == [0, 2], [log.read_text()[-2000:] for log in logs]
    loser = logs[codes.index(2)]
    lines = error_lines(loser)
    assert len(lines) == 1, lines
    assert ("is in use by pid" in lines[0] and lines[0].startswith("vaekit: run error: ")) or (
        "already holds a run" in lines[0]  # the winner finished before the loser got to the directory
    ), lines
    # the winner's run is whole: nothing was deleted under it
    run = tmp_path / "runs" / "same"
    assert (run / "model.safetensors").is_file() and (run / "summary.json").is_file()
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train" and "kind" not in r] == [
        4, 8, 12, 16, 20, 24, 28
    ]
    assert_loadable(complete(run)[-1])


def test_prepare_run_dir_looks_for_checkpoints_only_once_it_holds_the_lock(tmp_path: Path) -> None:
    """A run of the same name that checkpointed after this process decided to start is never deleted."""
    from vaekit.engine.rundir import prepare_run_dir
    from vaekit.errors import ConfigError

    run = tmp_path / "r"
    (run / "checkpoints" / "step_00000005").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    (run / ".vaekit-run").write_text('{"format": 1}')
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(run, resume=False, overwrite=False)
    assert (run / "checkpoints" / "step_00000005").is_dir()


def test_second_resume_of_a_running_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "runs", "r", train={"max_steps": 5000, "ckpt_every": 5})
    cfg, run = write_config(tmp_path / "cfg.yaml", tree), tmp_path / "runs" / "r"
    procs = [vaekit_proc("train", str(cfg), log=tmp_path / "first.err")]
    try:
        first = procs[0]
        wait_for(lambda: bool(complete(run)), 120, "the first checkpoint", first, tmp_path / "first.err")
        first.send_signal(signal.SIGKILL)  # its lock is now stale
        assert first.wait(timeout=30) == -signal.SIGKILL
        lock = run / ".lock"
        assert f"pid {first.pid} " in lock.read_text()

        second = vaekit_proc("train", "--resume", str(run), log=tmp_path / "second.err")
        procs.append(second)
        wait_for(lambda: f"pid {second.pid} " in lock.read_text(), 120, "the resume took the lock", second,
                 tmp_path / "second.err")
        third = vaekit_proc("train", "--resume", str(run), log=tmp_path / "third.err")
        procs.append(third)
        assert third.wait(timeout=120) == 2
        assert second.poll() is None, "the running resume was disturbed"
        assert "resuming at step" in (tmp_path / "second.err").read_text()
    finally:
        stop(*procs)
    lines = error_lines(tmp_path / "third.err")
    assert lines == [
        f"vaekit: run error: run directory {str(run)!r} is in use by pid {second.pid} on {socket.gethostname()} "
        + lines[0].split(f"{socket.gethostname()} ", 1)[1]
    ], lines
    assert "wait for it to finish or stop it" in lines[0]


# ------------------------------------------------------------------------------ 7. metrics.jsonl
def test_kill_between_periodic_and_epoch_end_checkpoint_does_not_duplicate_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ckpt_every=11: step 11 is checkpointed once by the periodic block and again at the epoch end, after the
    # epoch record and the validation record of step 11 were written
    tree = tiny_tree(tmp_path / "runs", "r", train={"max_steps": 14, "ckpt_every": 11}, log={"every": 1})
    snapshot = tmp_path / "killed"
    original, saves = CheckpointManager.save, []

    def save(self: CheckpointManager, step: int, train_state: dict[str, Any]) -> Any:
        saves.append(step)
        if step == 11 and saves.count(11) == 2:  # a kill here: the periodic checkpoint of step 11 is the newest one on disk
            shutil.copytree(self.dir.parent, snapshot)
        return original(self, step, train_state)

    monkeypatch.setattr(CheckpointManager, "save", save)
    reference = vaekit.train(tree).run_dir
    monkeypatch.setattr(CheckpointManager, "save", original)

    # the situation is really there: the checkpoint counts fewer records than the file holds
    state = json.loads((snapshot / "checkpoints" / "step_00000011" / "state.json").read_text())
    on_disk = read_jsonl(snapshot / "metrics.jsonl")
    assert state["batch_in_epoch"] == 11 and state["records"] < len(on_disk)
    assert [r["step"] for r in on_disk[state["records"]:] if r["split"] == "val"] == [11]
    strip_finished(snapshot, after=11)

    vaekit.train(resume=snapshot)

    records = read_jsonl(snapshot / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "val"] == [11, 14]
    assert_same_run(reference, snapshot)


def test_resume_after_kill_before_first_checkpoint_starts_a_new_log(straight, tmp_path: Path, capsys) -> None:
    reference = straight("plain", train={"max_steps": 14, "ckpt_every": 7}, log={"every": 1})
    run = tmp_path / "killed"
    shutil.copytree(reference, run)
    strip_finished(run)  # killed before its first checkpoint: records were logged, nothing was saved
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "split": "tra')  # and a line cut by the kill

    vaekit.train(resume=run)

    assert "run directory:" in capsys.readouterr().err  # not "resuming at step"
    assert_same_run(reference, run)


# --------------------------------------------------------------------------- 8. damaged checkpoints
def test_resume_skips_damaged_checkpoints_warns_once_each_and_matches_uninterrupted_run(
    straight, tmp_path: Path, capsys
) -> None:
    reference = straight("every2", train={"max_steps": 14, "ckpt_every": 2})  # steps 2 4 6 8 10 11 12 14
    run = tmp_path / "damaged"
    shutil.copytree(reference, run)
    strip_finished(run, after=12)
    ckpts = run / "checkpoints"
    (ckpts / "step_00000012" / "state.json").unlink()  # a replacement killed half-way (no state.json)
    damaged = {
        11: "optim.pt",  # truncated files: a disk that filled up, a copy cut short
        10: "model.safetensors",
        8: "rng_rank0.pt",
    }
    for step, name in damaged.items():
        file = ckpts / f"step_{step:08d}" / name
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    # leftovers of interrupted writes and prunes
    (ckpts / "step_00000013.tmp").mkdir()
    (ckpts / "step_00000013.tmp" / "model.safetensors").write_bytes(b"\x00partial")
    shutil.copytree(ckpts / "step_00000002", ckpts / "step_00000002.del")
    (ckpts / "step_00000002.del" / "optim.pt").unlink()
    (ckpts / "step_00000004.old").mkdir()
    capsys.readouterr()

    vaekit.train(resume=run)

    err = capsys.readouterr().err
    for step in (12, 11, 10, 8):
        assert err.count(f"skipping checkpoint step_{step:08d}") == 1, err
    assert "state.json: missing" in err and "optim.pt" in err and "model.safetensors" in err and "rng_rank0.pt" in err
    assert "resuming at step 6 in" in err
    assert_same_run(reference, run)
    # the damaged checkpoints were replaced by good ones and every leftover is gone
    assert [p.name for p in checkpoint_dirs(run)] == [p.name for p in checkpoint_dirs(reference)]
    for ckpt in checkpoint_dirs(run):
        assert_loadable(ckpt)


def test_replacement_of_a_checkpoint_interrupted_between_renames_resumes_from_the_old_copy(
    straight, tmp_path: Path, capsys
) -> None:
    """keep_last=1: step 11's periodic checkpoint is the only one; the epoch-end checkpoint of step 11 was being
    put in its place (old copy renamed to .old, the new one still .tmp) when the process died."""
    reference = straight("keep1", train={"max_steps": 14, "ckpt_every": 11, "keep_last": 1}, log={"every": 1})
    assert [p.name for p in checkpoint_dirs(reference)] == ["step_00000014"]
    run = tmp_path / "killed"
    shutil.copytree(reference, run)
    strip_finished(run)
    ckpts = run / "checkpoints"
    source = straight("every11", train={"max_steps": 14, "ckpt_every": 11}, log={"every": 1})
    shutil.copytree(source / "checkpoints" / "step_00000011", ckpts / "step_00000011.old")
    shutil.copytree(source / "checkpoints" / "step_00000011", ckpts / "step_00000011.tmp")
    (ckpts / "step_00000011.tmp" / "state.json").unlink()

    vaekit.train(resume=run)

    assert "resuming at step 11 in" in capsys.readouterr().err
    assert_same_run(reference, run)
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000014"]


def test_pruning_never_leaves_fewer_complete_checkpoints_than_keep_last(tmp_path: Path) -> None:
    """Interrupt the manager at every file operation of a save (as a kill would): a complete checkpoint of every
    step it held before is still there, or the new one is."""
    from torch import nn

    from vaekit.engine.checkpoint import list_checkpoints

    class Boom(Exception):
        pass

    model = nn.Linear(2, 2)
    for fail_at in range(1, 40):
        ckpt_dir = tmp_path / f"c{fail_at}" / "checkpoints"
        manager = CheckpointManager(ckpt_dir, 0, 1, True, lambda x: x, keep_last=2)
        manager.register("module", "model", model)
        for step in (1, 2):
            manager.save(step, {"step": step})
        calls = [0]
        real = {name: getattr(ckpt_mod.os, name) for name in ("replace",)} | {"rmtree": ckpt_mod.shutil.rmtree}

        def counted(name: str, fn: Any, calls: list[int] = calls, fail_at: int = fail_at) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                if calls[0] == fail_at:
                    raise Boom(name)
                return fn(*args, **kwargs)
            return wrapper

        ckpt_mod.os.replace = counted("replace", real["replace"])
        ckpt_mod.shutil.rmtree = counted("rmtree", real["rmtree"])
        try:
            for step in (2, 3):  # re-save step 2 (the .old swap), then step 3 (prunes step 1)
                manager.save(step, {"step": step})
        except Boom:
            pass
        finally:
            ckpt_mod.os.replace, ckpt_mod.shutil.rmtree = real["replace"], real["rmtree"]
        steps = [step_of(p) for p in list_checkpoints(ckpt_dir)]
        # step 2 (being replaced) is always there, and step 1 goes only once step 3 is in place
        assert 2 in steps and len(steps) >= 2, (fail_at, steps)
        for path in list_checkpoints(ckpt_dir):
            assert (path / "model.safetensors").is_file() and (path / "optim.pt").is_file(), (fail_at, path)
        if calls[0] < fail_at:
            break  # the whole sequence ran without reaching this operation: every point was covered


# ------------------------------------------------------------------------- 9. hostile checkpoints
class _Payload:
    """Unpickling it would create ``marker``: code execution, which loading must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _pickle_into(file: Path, marker: Path) -> None:
    """A payload added, and the manifest rewritten to match (a hostile author can do both): loading must still
    refuse the pickle itself."""
    state = torch.load(file, weights_only=True)
    torch.save({**state, "payload": _Payload(marker)}, file)
    ckpt_mod.write_manifest(file.parent)


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: max(1, file.stat().st_size // 3)])


HOSTILE = {
    "optim.pt-pickle": ("optim.pt", _pickle_into),
    "rng_rank0.pt-pickle": ("rng_rank0.pt", _pickle_into),
    "optim.pt-truncated": ("optim.pt", lambda f, m: _truncate(f)),
    "rng_rank0.pt-truncated": ("rng_rank0.pt", lambda f, m: _truncate(f)),
    "model.safetensors-truncated": ("model.safetensors", lambda f, m: _truncate(f)),
    "state.json-truncated": ("state.json", lambda f, m: _truncate(f)),
}


def test_the_pickle_payload_would_run_code_if_unpickled(tmp_path: Path) -> None:
    """The test's payload is real: an unrestricted ``torch.load`` runs it."""
    file, marker = tmp_path / "x.pt", tmp_path / "ran"
    torch.save({"payload": _Payload(marker)}, file)
    torch.load(file, weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_resume_from_a_hostile_or_truncated_checkpoint_is_one_line_naming_the_file(
    straight, tmp_path: Path, capsys, case: str
) -> None:
    name, damage = HOSTILE[case]
    run = tmp_path / "run"
    shutil.copytree(straight("one", train={"max_steps": 4}), run)  # one checkpoint: step 4
    strip_finished(run, after=4)
    marker = tmp_path / "code-ran"
    damage(run / "checkpoints" / "step_00000004" / name, marker)

    code, lines = run_cli(["train", "--resume", str(run)], capsys)

    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("vaekit: checkpoint error: "), lines
    assert str(run / "checkpoints" / "step_00000004" / name) in lines[0]
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert not (run / "model.safetensors").exists()


def test_resume_from_a_pickle_checkpoint_in_a_real_process_is_one_line(straight, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(straight("one", train={"max_steps": 4}), run)
    strip_finished(run, after=4)
    marker = tmp_path / "code-ran"
    _pickle_into(run / "checkpoints" / "step_00000004" / "optim.pt", marker)
    proc = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(run)], capture_output=True,
                          text=True, timeout=120, env=CHILD_ENV)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vaekit:")]
    assert len(lines) == 1 and "optim.pt: refused" in lines[0], proc.stderr[-2000:]
    assert not marker.exists()


def test_identical_runs_export_byte_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = []
    for where in ("a", "b"):  # the same config (run.dir is relative), trained in two places
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        tree = tiny_tree(Path("runs"), "r", train={"max_steps": 6, "ckpt_every": 3})
        run = vaekit.train(tree).run_dir
        files.append([tmp_path / where / run / f for f in ("model.safetensors", "checkpoints/step_00000006/model.safetensors")])
    for a, b in zip(*files, strict=True):
        assert a.read_bytes() == b.read_bytes(), a


# ----------------------------------------------------------------------- 11. paths that cannot work
def test_run_dir_under_a_regular_file_is_one_line(tmp_path: Path, capsys) -> None:
    # tests run as root, for whom chmod blocks nothing; a path through a regular file fails for everyone
    (tmp_path / "file").write_text("not a directory")
    tree = tiny_tree(tmp_path / "file" / "sub", "r", train={"max_steps": 2})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("vaekit: run error: run.dir: cannot create or write "), lines
    assert str(tmp_path / "file" / "sub" / "r") in lines[0] and "Not a directory" in lines[0]


@pytest.mark.parametrize("target", ["text-file", "empty-dir"])
def test_init_from_something_that_is_not_weights_is_one_line(tmp_path: Path, capsys, target: str) -> None:
    if target == "text-file":
        source = tmp_path / "model.safetensors"
        source.write_text("these are not weights\n")
    else:
        source = tmp_path / "empty-run"
        source.mkdir()
    stages = [{"name": "warm", "steps": 2, "init_from": str(source)}]
    tree = tiny_tree(tmp_path / "runs", "r", stages=stages)
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("vaekit: config error: stages.0.init_from (warm): "), lines
    assert str(source) in lines[0]
    assert not (tmp_path / "runs").exists()  # checked before anything is created or printed


def test_stage_name_with_a_slash_is_refused_by_the_cli(tmp_path: Path, capsys) -> None:
    tree = tiny_tree(tmp_path / "runs", "r", stages=[{"name": "a/b", "steps": 2}])
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("vaekit: config error: stages.0.name: 'a/b' is invalid"), lines
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------- 14. read-only and full disks
def _fail_at_checkpoint(monkeypatch: pytest.MonkeyPatch, n: int, before: Any) -> None:
    """Run ``before(manager)`` just before the n-th checkpoint is written."""
    original, count = CheckpointManager.save, [0]

    def save(self: CheckpointManager, step: int, train_state: dict[str, Any]) -> Any:
        count[0] += 1
        if count[0] == n:
            before(self)
        return original(self, step, train_state)

    monkeypatch.setattr(CheckpointManager, "save", save)


def _check_last_checkpoint_survived(run: Path, line: str, step: int, capsys) -> None:
    last = complete(run)[-1]
    assert step_of(last) == step and f"the last complete checkpoint is {last}" in line, line
    assert not [p for p in checkpoint_dirs(run) if "." in p.name], checkpoint_dirs(run)  # no .tmp left
    assert_loadable(last)


def test_read_only_checkpoint_directory_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ckpts = tmp_path / "runs" / "r" / "checkpoints"
    try:
        # the immutable flag stops root too (chmod does not)
        _fail_at_checkpoint(monkeypatch, 2, lambda m: subprocess.run(["chattr", "+i", str(m.dir)], check=True))
        probe = tmp_path / "probe"
        probe.mkdir()
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        subprocess.run(["chattr", "-i", str(probe)], check=True)
        tree = tiny_tree(tmp_path / "runs", "r", train={"max_steps": 12, "ckpt_every": 4})
        code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    finally:
        if ckpts.is_dir():
            subprocess.run(["chattr", "-i", str(ckpts)], check=False)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(
        f"vaekit: run error: cannot write checkpoint step_00000008 in run directory {str(ckpts.parent)!r} "
        "(Operation not permitted"
    ), lines
    _check_last_checkpoint_survived(ckpts.parent, lines[0], 4, capsys)
    monkeypatch.undo()
    code, _ = run_cli(["train", "--resume", str(ckpts.parent)], capsys)  # space again: it resumes and finishes
    assert code == 0 and (ckpts.parent / "model.safetensors").is_file()


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real_save = torch.save

    def no_space(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    _fail_at_checkpoint(monkeypatch, 2, lambda m: monkeypatch.setattr(torch, "save", no_space))
    tree = tiny_tree(tmp_path / "runs", "r", train={"max_steps": 12, "ckpt_every": 4})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    monkeypatch.setattr(torch, "save", real_save)
    run = tmp_path / "runs" / "r"
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(
        f"vaekit: run error: cannot write checkpoint step_00000008 in run directory {str(run)!r} "
        f"(No space left on device: {run / 'checkpoints' / 'step_00000008.tmp' / 'optim.pt'})"
    ), lines
    _check_last_checkpoint_survived(run, lines[0], 4, capsys)


def test_full_disk_at_the_final_export_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    real = ckpt_mod.save_file

    def save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
        if Path(filename).name == "model.safetensors.tmp":  # the export, not a checkpoint
            Path(filename).write_bytes(b"\x00" * 10)  # a partial file, as a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", save_file)
    tree = tiny_tree(tmp_path / "runs", "r", train={"max_steps": 6})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    run = tmp_path / "runs" / "r"
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(
        f"vaekit: run error: cannot write {run / 'model.safetensors'} in run directory {str(run)!r} "
        "(No space left on device); the last complete checkpoint is "
    ), lines
    assert not (run / "model.safetensors").exists() and not (run / "model.safetensors.tmp").exists()
    assert_loadable(complete(run)[-1])
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    code, _ = run_cli(["train", "--resume", str(run)], capsys)  # space again: the resume exports
    assert code == 0 and (run / "model.safetensors").is_file()


# --------------------------------------------------------------------------------- 13. data workers
def _image_folder(root: Path, n: int = 40, corrupt: int | None = 3) -> tuple[Path, Path | None]:
    """``n`` 24×24 PNGs; file ``corrupt`` keeps a valid header (it passes the scan) and loses its pixel data."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    bad = None
    for i in range(n):
        path = root / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
        if i == corrupt:
            path.write_bytes(path.read_bytes()[:60])  # signature and IHDR intact, IDAT cut
            bad = path
    return root, bad


def _image_tree(tmp_path: Path, images: Path, **data: Any) -> dict[str, Any]:
    # 40 files, val_fraction 0.2: 32 train (4 batches of 8, none dropped) and 8 val: every file is read
    return tiny_tree(
        tmp_path / "runs", "img",
        data={"source": "image_folder", "path": str(images), "image_size": 16, "in_memory": "never",
              "val_fraction": 0.2, "num_samples": None, **data},
        train={"batch_size": 8, "max_steps": 8, "val_batches": 1},
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_read_by_a_worker_is_the_same_one_line_as_in_the_main_process(tmp_path: Path, workers: int) -> None:
    images, bad = _image_folder(tmp_path / "images")
    cfg = write_config(tmp_path / "cfg.yaml", _image_tree(tmp_path, images, num_workers=workers))
    proc = subprocess.run([sys.executable, "-m", "vaekit", "train", str(cfg)], capture_output=True, text=True,
                          timeout=240, env=CHILD_ENV)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "worker" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vaekit:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"vaekit: data error: {bad}: cannot decode image ("), lines


def test_worker_message_unwraps_torchs_exception_wrapper() -> None:
    from torch.utils.data._utils import ExceptionWrapper

    from vaekit.data.loader import worker_message
    from vaekit.errors import DataError

    try:
        raise DataError("/data/x.png: cannot decode image (broken data stream)")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value)
    assert worker_message(str(caught.value)) == "/data/x.png: cannot decode image (broken data stream)"
    assert worker_message("plain message") == "plain message"


@pytest.mark.parametrize("workers", [0, 2])
def test_skipped_streamed_images_are_warned_about_and_counted(tmp_path: Path, workers: int) -> None:
    images, bad = _image_folder(tmp_path / "images")
    (images / "garbage.png").write_bytes(b"not an image at all")  # found by the scan: counted in info.skipped
    cfg = write_config(tmp_path / "cfg.yaml", _image_tree(tmp_path, images, num_workers=workers, on_error="skip",
                                                           num_samples=None))
    proc = subprocess.run([sys.executable, "-m", "vaekit", "train", str(cfg)], capture_output=True, text=True,
                          timeout=240, env=CHILD_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]
    # every file is fully decoded at build (issue 19): the truncated one is found there too, not only by a worker
    summary = next(line for line in err.splitlines() if "unreadable image(s)" in line)
    assert summary.startswith(f"skipped 2 unreadable image(s) (data.on_error=skip): {images / 'garbage.png'}")
    assert str(bad) in summary
    assert "2 skipped" in next(line for line in err.splitlines() if line.startswith("data: "))
    assert "warning: skipping unreadable image" not in err, err


def test_skipped_video_clip_is_warned_about_once_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from vaekit.data.video import VideoClipSource, VideoItem

    frames = []
    for i in range(4):
        path = tmp_path / "clip" / f"f{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(path)
        frames.append(path)
    frames[1].write_bytes(frames[1].read_bytes()[:40])  # a frame that no longer decodes
    good = [tmp_path / "clip" / "f0.png", tmp_path / "clip" / "f2.png", tmp_path / "clip" / "f3.png"]
    videos = [VideoItem(tmp_path / "clip", 4, frame_files=tuple(frames)), VideoItem(tmp_path / "ok", 3, frame_files=tuple(good))]
    source = VideoClipSource(videos, [(0, 0), (1, 0)], frames=2, stride=1, size=8, channels=3, random_start=False,
                             skip_errors=True)
    with caplog.at_level(logging.WARNING, logger="vaekit.data.video"):
        for _ in range(3):
            assert source[0]["x"].shape == (3, 2, 8, 8)  # the next readable clip in its place
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable clip" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "clip") in warned[0] and "data.on_error=skip" in warned[0], warned
    assert source.skipped == {tmp_path / "clip"}


# ------------------------------------------------------------------------- 15. a process that stops
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stopped_process_fails_the_other_within_the_timeout_in_one_line(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "runs", "ddp", optim={"name": "sgd", "lr": 1e-4},
                     train={"max_steps": 100000, "ckpt_every": 5, "timeout_s": 10}, log={"every": 5})
    cfg, run = write_config(tmp_path / "cfg.yaml", tree), tmp_path / "runs" / "ddp"
    log = tmp_path / "torchrun.err"
    with open(log, "w") as fh:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
             str(_free_port()), "-m", "vaekit", "train", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=fh, env=CHILD_ENV, cwd=tmp_path,
        )
    workers: dict[int, psutil.Process] = {}
    try:
        wait_for(lambda: bool(complete(run)), 180, "the first checkpoint", launcher, log)
        for child in psutil.Process(launcher.pid).children(recursive=True):
            rank = child.environ().get("RANK")
            if rank is not None and child.environ().get("LOCAL_RANK") is not None:
                workers[int(rank)] = child
        assert sorted(workers) == [0, 1], workers
        workers[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        workers[0].wait(timeout=90)  # gloo gives up after train.timeout_s; one line; the process exits
        waited = time.monotonic() - stopped_at
        workers[1].send_signal(signal.SIGKILL)
        launcher.wait(timeout=60)
    finally:
        for proc in workers.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        stop(launcher)
    assert waited < 60, waited
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("vaekit:")]
    assert len(lines) == 1, text[-3000:]
    last = complete(run)[-1]
    assert lines[0].startswith("vaekit: run error: a process did not respond within train.timeout_s=10 ("), lines
    assert lines[0].endswith(f"the last complete checkpoint is {last}"), lines
    assert f'{SRC / "vaekit"}' not in text, text[-3000:]  # no traceback through vaekit's code
    assert_loadable(last)
    assert (last / "rng_rank1.pt").is_file()
