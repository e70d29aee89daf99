"""What a finished run leaves behind: config, metrics.jsonl, TensorBoard events (read back with TensorBoard's own
EventAccumulator), sample grids, checkpoints, exported weights, summary and curves — and what ``vaekit.train``
returns. Plus mixed precision on CPU.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_tree
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vaekit
from vaekit.config.load import ConfigError
from vaekit.models import count_parameters

META = {"time", "step", "epoch", "stage", "stage_index", "split", "kind"}
LOSS_TERMS = {"loss", "recon", "kl", "mse"}
SAMPLE_NAME = re.compile(r"^(?P<stage>\w+)_(?P<index>\d{3})_(?P<epoch>\d{3})_(?P<step>\d{6})-(?P<kind>recon|prior)\.png$")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """12 steps (one epoch of 11 batches, then one more step), logging every 2, validating every 6."""
    root = tmp_path_factory.mktemp("outputs")
    cfg = tiny_tree(
        root / "runs", "out",
        log={"samples": True, "plots": True, "every": 2, "num_samples": 8},
        train={"val_every": 6, "max_steps": 12},
    )
    return vaekit.train(cfg)


@pytest.fixture(scope="module")
def records(run) -> list[dict[str, Any]]:
    return read_jsonl(run.run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def events(run) -> EventAccumulator:
    files = list((run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_run_directory_has_every_output(run) -> None:
    d = run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "summary.json", "curves.png"):
        assert (d / name).is_file(), name
    assert yaml.safe_load((d / "config.yaml").read_text())["train"]["val_every"] == 6
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert ckpts == ["step_00000011", "step_00000012"]  # end of epoch 1, end of run
    assert run.checkpoint == d / "checkpoints" / "step_00000012"
    assert run.model_path == d / "model.safetensors"
    with Image.open(d / "curves.png") as img:
        assert img.format == "PNG" and img.width > 100


def test_metrics_jsonl_records_carry_position_and_every_term(run, records) -> None:
    train = [r for r in records if r["split"] == "train" and "kind" not in r]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert sorted({r["step"] for r in val}) == [6, 12]
    for r in train:
        missing = {"step", "epoch", "split", "stage", "loss", "recon", "kl", "mse", "lr", "samples_per_sec"} - set(r)
        assert not missing, (r["step"], missing)
        assert r["stage"] == "train" and r["epoch"] == (0 if r["step"] <= 11 else 1)
        assert r["samples_per_sec"] > 0 and r["lr"] == pytest.approx(1e-3)
    for r in val:
        assert {"step", "epoch", "split", "stage", "active_units"} | LOSS_TERMS <= set(r), r
        assert 0 <= r["active_units"] <= 4
        assert all(math.isfinite(r[k]) for k in LOSS_TERMS)


def test_each_validation_is_logged_once(records) -> None:
    # val_every=6 validates at the last step (12); the end of the stage must not validate (and log) it again
    keys = [(r["step"], r["split"], r.get("kind")) for r in records]
    assert len(keys) == len(set(keys)), keys


def test_tensorboard_scalars_match_metrics_jsonl(records, events) -> None:
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.get("kind") == "epoch":  # epoch means go to metrics.jsonl (the run's history), not TensorBoard
            continue
        for key, value in r.items():
            if key not in META and isinstance(value, (int, float)):
                expected.setdefault(f"{r['split']}/{key}", []).append((r["step"], value))
    assert {"train/loss", "train/recon", "train/kl", "train/lr", "val/recon", "val/active_units"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [s for s, _ in points], tag
        assert [e.value for e in logged] == pytest.approx([v for _, v in points], rel=1e-5), tag


def test_tensorboard_has_sample_images_at_each_validation(events, records) -> None:
    val_steps = [r["step"] for r in records if r["split"] == "val"]
    for tag in ("samples/recon", "samples/prior"):
        images = events.Images(tag)
        assert [im.step for im in images] == val_steps, tag
        assert all(im.width > 32 and im.height > 32 for im in images)


def test_sample_pngs_are_named_by_stage_epoch_and_step(run) -> None:
    files = sorted(p.name for p in (run.run_dir / "samples").iterdir())
    assert files == [
        "train_000_000_000006-prior.png",
        "train_000_000_000006-recon.png",
        "train_000_001_000012-prior.png",
        "train_000_001_000012-recon.png",
    ]
    for name in files:
        assert SAMPLE_NAME.match(name), name
        with Image.open(run.run_dir / "samples" / name) as img:
            img.verify()


def test_exported_model_loads_and_reconstructs_like_the_trained_one(run) -> None:
    loaded = vaekit.load_model(run.run_dir)
    assert not loaded.training
    x = torch.rand(5, 1, 32, 32)
    run.model.eval()
    with torch.no_grad():
        want = run.model(x, sample_posterior=False).recon
        got = loaded(x, sample_posterior=False).recon
    assert torch.equal(got, want)


def test_summary_json_describes_the_run(run, records) -> None:
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary == run.summary
    assert summary["steps"] == 12
    assert summary["wall_time_sec"] > 0
    assert summary["parameters"] == count_parameters(run.model) > 0
    last_val = [r for r in records if r["split"] == "val"][-1]
    assert {"loss", "recon", "kl", "mse", "active_units"} <= set(summary["final_val"])
    for key, value in summary["final_val"].items():
        assert value == pytest.approx(last_val[key], rel=1e-6), key
    assert summary["skipped_batches"] == 0


def test_train_result_history_has_epoch_totals_and_validations(run) -> None:
    train, val = run.split("train"), run.split("val")
    assert [r["epoch"] for r in train] == [0, 1]  # the full epoch, then the one step of epoch 2
    assert [r["step"] for r in train] == [11, 12]
    for r in train:
        assert LOSS_TERMS | {"kl_weight"} <= set(r), r
        assert r["loss"] == pytest.approx(r["recon"] + r["kl_weight"] * r["kl"], rel=1e-5)
    assert {r["step"] for r in val} == {6, 12}
    for r in val:
        assert LOSS_TERMS | {"active_units"} <= set(r)
    assert len(run.history) == len(train) + len(val)  # nothing but epoch totals and validations


def test_second_run_with_the_same_name_is_refused_unless_overwrite(tmp_path: Path) -> None:
    """config.schema RunConfig.overwrite: "Default: refuse, suggest --resume"."""
    cfg = tiny_tree(tmp_path / "runs", "same", train={"max_steps": 3})
    vaekit.train(cfg)
    with pytest.raises(ConfigError, match=r"run\.name: .*--resume"):
        vaekit.train(tiny_tree(tmp_path / "runs", "same", train={"max_steps": 2}))
    # with run.overwrite the old run is replaced, not mixed into the new one
    again = vaekit.train(tiny_tree(tmp_path / "runs", "same", train={"max_steps": 2}, run={"overwrite": True}))
    assert sorted(p.name for p in (again.run_dir / "checkpoints").iterdir()) == ["step_00000002"]
    assert [r["step"] for r in read_jsonl(again.run_dir / "metrics.jsonl") if "kind" not in r] == [2]


def test_run_that_failed_on_its_data_can_be_rerun_under_the_same_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.path"):
        vaekit.train(tiny_tree(tmp_path / "runs", "retry", data={"source": "mnist", "num_samples": None}))
    # nothing was trained: the corrected command may take the name (no --resume of a run that never ran)
    result = vaekit.train(tiny_tree(tmp_path / "runs", "retry", train={"max_steps": 2}))
    assert result.run_dir == tmp_path / "runs" / "retry"
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["data"]["source"] == "shapes"


# ------------------------------------------------------------------------------------------ precision
def _losses(result) -> list[float]:
    return [r["loss"] for r in result.history]


def test_bf16_trains_on_cpu_with_finite_loss(tmp_path: Path) -> None:
    result = vaekit.train(tiny_tree(tmp_path / "runs", "bf16", train={"max_steps": 3, "precision": "bf16"}))
    assert result.config.train.precision == "bf16"
    assert result.history and all(math.isfinite(v) for v in _losses(result))
    assert all(math.isfinite(v) for v in result.summary["final_val"].values())
    # the exported weights stay float32 (autocast only changes the compute dtype)
    assert {p.dtype for p in vaekit.load_model(result.run_dir).parameters()} == {torch.float32}


def test_precision_can_change_between_runs_in_one_process(tmp_path: Path) -> None:
    bf16 = vaekit.train(tiny_tree(tmp_path / "runs", "a", train={"max_steps": 3, "precision": "bf16"}))
    fp32 = vaekit.train(tiny_tree(tmp_path / "runs", "b", train={"max_steps": 3, "precision": "no"}))
    assert _losses(bf16) != _losses(fp32)  # bf16 really was applied to the first run, and not to the second
    assert all(math.isfinite(v) for v in _losses(bf16) + _losses(fp32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_fp16_on_cpu_is_refused_clearly_or_really_applied(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = tiny_tree(tmp_path / "runs", "half", train={"max_steps": 3, "precision": "fp16"})
    try:
        fp16 = vaekit.train(tree)
    except ConfigError as err:  # a clear refusal is good behaviour
        assert "train.precision" in str(err) and "\n" not in str(err)
        return
    said = [line for line in capsys.readouterr().err.replace(str(tmp_path), "").splitlines() if "fp16" in line]
    fp32 = vaekit.train(tiny_tree(tmp_path / "runs", "full", train={"max_steps": 3, "precision": "no"}))
    # a working run must either compute in fp16 (different numbers) or say that it does not
    assert _losses(fp16) != _losses(fp32) or said, "fp16 silently trained in float32"
