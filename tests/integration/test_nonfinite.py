"""A loss that goes non-finite mid-run, produced for real: plain SGD with a learning rate far too large makes the
weights (and then the loss) blow up within a few steps. Nothing in the trainer is mocked.

``nan_policy=stop`` raises ``NonFiniteLossError`` naming the step, the term(s) and the last good checkpoint (the CLI
exits with code 3 and one line); ``nan_policy=skip`` drops the bad batches, counts them and finishes.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file

import vaekit
from vaekit.errors import NonFiniteLossError

TERMS = {"loss", "recon", "kl", "mse"}


def blowup(lr: float = 1.0, **train: Any) -> dict[str, Any]:
    """SGD at ``lr``: with lr=1 the loss is ~7e6 at step 2, ~2e18 at step 3 and NaN at step 4."""
    return {
        "optim": {"name": "sgd", "lr": lr},
        "train": {"max_steps": 20, "ckpt_every": 2, **train},
        "log": {"every": 1},  # every step is logged: the first missing train record is the bad step
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def all_finite(weights: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(weights)).values())


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*[0-9]"), key=lambda p: int(p.name[5:]))


def test_nonfinite_loss_stops_naming_step_term_and_last_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        vaekit.train(tiny_tree(tmp_path / "runs", "nan", **blowup()))
    message = str(info.value)
    assert "\n" not in message

    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train" and "kind" not in r]
    assert logged == list(range(1, len(logged) + 1)) and 1 < len(logged) < 10
    bad_step = logged[-1] + 1  # the first step whose terms were not all finite (steps count from 1)
    assert re.search(rf"\bstep {bad_step}\b", message), message
    named = set(re.findall(r"\b(loss|recon|kl|mse)\b", message))
    assert named and named <= TERMS, message

    saved = checkpoints(run_dir)
    assert saved, "ckpt_every=2 wrote no checkpoint before the blow-up"
    last = saved[-1]
    assert str(last) in message, message
    assert int(last.name[5:]) < bad_step
    assert all_finite(last / "model.safetensors")
    assert not (run_dir / "model.safetensors").exists(), "a stopped run must not export weights"


def test_nonfinite_loss_via_cli_exits_3_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree(tmp_path / "runs", "nan", **blowup())))
    out = subprocess.run(
        [sys.executable, "-m", "vaekit", "train", str(cfg), "log.progress=false"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 3, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    # the run's own progress lines come first; the error is the one line after them
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("vaekit:")]
    assert len(lines) == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == lines[0]
    assert "non-finite" in lines[0] and "step" in lines[0]
    assert str(checkpoints(tmp_path / "runs" / "nan")[-1]) in lines[0]
    assert out.stdout == ""


def test_checkpoint_named_after_a_blowup_has_finite_weights(tmp_path: Path) -> None:
    bad = []
    for lr in (0.05, 0.1, 0.2):
        name = f"lr{lr}"
        with pytest.raises(NonFiniteLossError) as info:
            vaekit.train(tiny_tree(tmp_path / "runs", name, **blowup(lr)))
        found = re.search(r"last good checkpoint is (\S+)", str(info.value))
        if found and not all_finite(Path(found.group(1)) / "model.safetensors"):
            bad.append(f"lr={lr}: {found.group(1)}")
    assert not bad, f"named checkpoints with non-finite weights: {bad}"


def test_nan_policy_skip_finishes_and_counts_skipped_batches(tmp_path: Path) -> None:
    skip = {"max_steps": 10, "nan_policy": "skip", "nan_skip_limit": 1.0}
    result = vaekit.train(tiny_tree(tmp_path / "runs", "skip", **blowup(**skip)))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 10
    assert 0 < summary["skipped_batches"] < 10
    assert summary["skipped_batches"] == result.summary["skipped_batches"]
    # skipped batches never reach the weights: the exported model is still finite
    assert all_finite(result.model_path)
    assert all(math.isfinite(v) for v in [p.abs().max().item() for p in result.model.parameters()])
    # and the run is deterministic: the same config skips the same batches
    again = vaekit.train(tiny_tree(tmp_path / "runs", "skip2", **blowup(**skip)))
    assert again.summary["skipped_batches"] == summary["skipped_batches"]


def test_nan_policy_skip_stops_with_exit_3_past_the_skip_limit(tmp_path: Path) -> None:
    cfg = tmp_path / "skip.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree(tmp_path / "runs", "skip", **blowup(max_steps=40, nan_policy="skip"))))
    out = subprocess.run(
        [sys.executable, "-m", "vaekit", "train", str(cfg), "log.progress=false"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 3, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("vaekit: stopped: skipped") and "nan_skip_limit" in last, last
    assert not (tmp_path / "runs" / "skip" / "model.safetensors").exists()


def test_logging_never_changes_training_even_when_the_norm_overflows(tmp_path: Path) -> None:
    """The gradient norm computed for logging must not touch the gradients (an infinite norm once turned the
    update into NaN one step after each logging step)."""
    weights = []
    for every in (1, 1000):
        tree = tiny_tree(tmp_path / "runs", f"log{every}", optim={"name": "sgd", "lr": 0.3},
                         train={"max_steps": 6, "nan_policy": "skip", "nan_skip_limit": 1.0}, log={"every": every})
        result = vaekit.train(tree)
        weights.append(load_file(str(result.model_path)))
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, equal_nan=True)
