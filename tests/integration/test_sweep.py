"""``vaekit sweep``: bad input refused in one line before anything trains; a 4-trial study killed (SIGKILL) and
continued loses no finished trial and ends with 4 finished trials, one run directory each, tables and a plot."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_tree
from test_resume import CHILD_ENV

from vaekit.cli import main
from vaekit.errors import ConfigError
from vaekit.sweep.spec import parse_param


def _config(tmp_path: Path) -> Path:
    tree = tiny_tree(tmp_path / "runs", "s")
    tree["train"].update(max_steps=8, val_every=4, ckpt_every=4)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_param_strings_parse_into_distributions() -> None:
    p = parse_param("optim.lr=loguniform:1e-4:1e-2")
    assert (p.key, p.kind, p.low, p.high) == ("optim.lr", "loguniform", 1e-4, 1e-2)
    assert parse_param("loss.beta=choice:1,4,10").choices == (1, 4, 10)
    assert parse_param("model.latent_dim=int:2:8").kind == "int"
    for bad in ("optim.lr", "optim.lr=gauss:0:1", "optim.lr=uniform:2:1", "optim.lr=uniform:a:b", "x=choice:",
                "model.latent_dim=int:1.5:3"):
        with pytest.raises(ConfigError):
            parse_param(bad)


@pytest.mark.parametrize(("args", "message"), [
    (["--param", "loss.bta=choice:1,4"], "--param loss.bta=1: loss.bta: unknown key"),
    (["--param", "optim.lr=logunif:1e-4:1e-2"], "unknown distribution 'logunif'"),
    (["--param", "optim.lr=uniform:1e-2:1e-4"], "does not parse"),
    (["--param", "optim.lr=uniform:1e-4:1e-2", "--metric", "val/psnr"], "--metric val/psnr: the runs never log it"),
    (["--param", "optim.lr=choice:-1,1"], "--param optim.lr=-1"),
    ([], "no parameters"),
])
def test_bad_sweep_input_fails_in_one_line_before_training(tmp_path: Path, capsys, args: list[str],
                                                           message: str) -> None:
    cfg = _config(tmp_path)
    assert main(["sweep", str(cfg), "--trials", "2", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def _finished(db: Path) -> list[tuple[int, str, float | None, dict]]:
    import optuna

    if not db.is_file():
        return []
    try:
        study = optuna.load_study(study_name="vaekit", storage=f"sqlite:///{db}")
    except Exception:  # the study is being created
        return []
    return [(t.number, t.state.name, t.value, t.params) for t in study.get_trials() if t.state.is_finished()]


def test_sweep_killed_and_continued_keeps_finished_trials(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    sweep_dir = tmp_path / "runs" / "sweep-s"
    cmd = [sys.executable, "-m", "vaekit", "sweep", str(cfg), "--trials", "4", "--pruner", "none",
           "--param", "optim.lr=loguniform:1e-4:1e-2", "--param", "loss.beta=choice:1,4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV)
    try:
        deadline = time.monotonic() + 240
        while not any(state == "COMPLETE" for _, state, _, _ in _finished(sweep_dir / "study.db")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no finished trial within 240 s"
            time.sleep(0.2)
        time.sleep(3)  # the second trial is under way
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = {n: (v, p) for n, state, v, p in _finished(sweep_dir / "study.db") if state == "COMPLETE"}
    assert 1 <= len(before) < 4

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=CHILD_ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    after = _finished(sweep_dir / "study.db")
    complete = {n: (v, p) for n, state, v, p in after if state == "COMPLETE"}
    assert len(complete) == 4
    assert all(complete[n] == before[n] for n in before)  # nothing finished was lost or rerun
    failed = [(n, p) for n, state, _, p in after if state == "FAIL"]  # the trial the kill interrupted, retried
    assert all(any(p == q for m, (_, q) in complete.items() if m > n) for n, p in failed)
    result = json.loads((sweep_dir / "results.json").read_text())
    assert sum(r["state"] == "complete" for r in result["trials"]) == 4
    for row in result["trials"]:
        if row["state"] == "complete":
            assert (Path(row["run_dir"]) / "model.safetensors").is_file()
    assert (sweep_dir / "results.md").read_text().startswith("# Sweep: val/loss (minimize)")
    assert (sweep_dir / "params.png").stat().st_size > 0


def test_trials_with_several_processes_launch_through_torchrun(tmp_path: Path) -> None:
    from vaekit.sweep.runner import _command
    from vaekit.sweep.spec import build_spec

    spec = build_spec(str(_config(tmp_path)), [], {"nproc": 2}, ["optim.lr=loguniform:1e-4:1e-2"])
    cmd = _command(spec, tmp_path / "trials" / "trial-0003", {"optim.lr": 0.001}, resume=False)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cmd[-3:] == ["run.name=trial-0003", "log.progress=false", "optim.lr=0.001"]
    resume = _command(spec, tmp_path / "trials" / "trial-0003", {}, resume=True)
    assert resume[-2:] == ["--resume", str(tmp_path / "trials" / "trial-0003")]
