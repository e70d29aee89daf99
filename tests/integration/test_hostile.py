"""What a hostile tester tried (issue 19): directories vaekit does not own, odd lock files, damaged or incomplete
checkpoints, non-finite weights and buffers, a changed process count, damaged run files and bad options. Each is
refused in one line (``vaekit: <label>: ...``, exit 2; a non-finite run exits 3), and nothing that is not
vaekit's own is ever removed or overwritten.

Runs are in-process (``vaekit.cli.main`` / ``vaekit.train``) on the tiny conv config of ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_tree

import vaekit
from vaekit import cli


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


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """``finished(name)`` → a copy (in ``dest``) of a finished tiny run trained once per module."""
    root = tmp_path_factory.mktemp("finished")
    reference = vaekit.train(tiny_tree(root, "ref", train={"max_steps": 8, "ckpt_every": 4})).run_dir

    def copy(dest: Path) -> Path:
        shutil.copytree(reference, dest)
        (dest / ".lock").unlink(missing_ok=True)
        return dest

    return copy


# ------------------------------------------------------------------------------------------ 1. lost files
def test_a_foreign_directory_with_a_config_yaml_is_refused_and_left_untouched(tmp_path: Path, capsys) -> None:
    run = tmp_path / "runs" / "p"
    (run / "src").mkdir(parents=True)
    (run / "config.yaml").write_text("lr: 0.1\n")
    (run / "src" / "main.py").write_text("x\n")
    tree = tiny_tree(tmp_path / "runs", "p", run={"overwrite": True})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2 and len(lines) == 1 and "is not a vaekit run directory" in lines[0], lines
    assert (run / "src" / "main.py").read_text() == "x\n" and (run / "config.yaml").read_text() == "lr: 0.1\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "src"]  # no .lock, no marker


def test_resume_of_a_foreign_directory_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "p"
    run.mkdir()
    write_config(run / "config.yaml", tiny_tree(tmp_path, "p"))
    (run / "notes.txt").write_text("mine\n")
    code, lines = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(lines) == 1 and "is not a vaekit run directory" in lines[0], lines
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]


def test_overwrite_removes_only_vaekits_own_files(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / "notes.txt").write_text("mine\n")
    (run / "mine").mkdir()
    tree = tiny_tree(tmp_path / "runs", "ref", train={"max_steps": 4}, run={"overwrite": True})
    code, _ = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 0
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "mine").is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004"]  # the old run's are gone
    assert json.loads((run / ".vaekit-run").read_text())["format"] == 1


def test_a_run_made_before_the_marker_is_still_resumed_and_overwritten(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / ".vaekit-run").unlink()
    code, lines = run_cli(["train", "--resume", str(run), "train.max_steps=12"], capsys)
    assert code == 0, lines
    assert (run / ".vaekit-run").is_file()  # adopted
    (run / ".vaekit-run").unlink()
    tree = tiny_tree(tmp_path / "runs", "ref", train={"max_steps": 4}, run={"overwrite": True})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 0, lines


@pytest.mark.parametrize("resume", [False, True])
def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(finished, tmp_path: Path, capsys, resume) -> None:
    run = finished(tmp_path / "runs" / "ref")
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (run / ".lock").symlink_to(target)
    tree = tiny_tree(tmp_path / "runs", "ref", run={"overwrite": True})
    argv = ["train", "--resume", str(run)] if resume else ["train", str(write_config(tmp_path / "cfg.yaml", tree))]
    code, lines = run_cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and "is a symbolic link" in lines[0] and ".lock" in lines[0], lines
    assert target.read_text() == "precious\n" and (run / ".lock").is_symlink()


def test_a_lock_that_is_a_directory_says_so(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / ".lock").mkdir()
    code, lines = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(lines) == 1 and "is a directory" in lines[0], lines


def test_a_lock_with_a_second_name_is_not_truncated(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    os.link(target, run / ".lock")
    code, lines = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(lines) == 1 and "not a plain file of its own" in lines[0], lines
    assert target.read_text() == "precious\n"


def test_a_refused_start_leaves_no_lock_behind(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    tree = tiny_tree(tmp_path / "runs", "ref")
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2 and "already holds a run" in lines[0], lines
    assert not (run / ".lock").exists()


def test_a_held_lock_names_the_process_that_holds_it_not_the_pid_in_the_file(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / ".lock").write_text("pid 1 on elsewhere since yesterday")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(run / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, lines = run_cli(["train", "--resume", str(run)], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and len(lines) == 1 and f"is in use by pid {holder.pid}" in lines[0], lines
    assert "pid 1 " not in lines[0]
