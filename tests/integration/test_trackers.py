"""W&B and MLflow for real, offline: every scalar of ``metrics.jsonl`` and every sample image arrives (read back
from W&B's offline run files and from MLflow's local SQLite store through ``MlflowClient``), the run ids are kept in
``trackers.json``, ``--resume`` continues the same tracker runs, and a run that fails closes them as failed."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

import vaekit
from vaekit.config.schema import LogConfig
from vaekit.tracking.tracker import Tracker

wandb = pytest.importorskip("wandb")
pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

LOG = {"wandb": True, "wandb_mode": "offline", "mlflow": True, "samples": True, "num_samples": 4, "every": 2}


def wandb_records(path: Path) -> list[Any]:
    """The records of a ``run-<id>.wandb`` file (a LevelDB-style log: a 7-byte file header, 32 KiB blocks,
    each chunk behind a (crc32, length, type) header; type 1 = full record, 2/3/4 = first/middle/last piece)."""
    data, pos, block, pending, out = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def wandb_history(run_dir: Path) -> tuple[set[str], list[dict[str, Any]]]:
    """(run ids, history rows) over every offline piece of the run (one per process that logged to it)."""
    ids, rows = set(), []
    for file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
            elif kind == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return ids, rows


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train" and "kind" not in r]


def test_wandb_and_mlflow_offline_receive_everything_and_resume_the_same_runs(tiny) -> None:
    first = vaekit.train(tiny("trk", log=LOG, train={"max_steps": 8, "val_every": 2, "ckpt_every": 4}))
    run_dir = first.run_dir
    ids = json.loads((run_dir / "trackers.json").read_text())
    assert ids["wandb"]["id"] and ids["mlflow"]["run_id"] and ids["mlflow"]["tracking_uri"].startswith("sqlite:")
    # as if killed after the step-4 checkpoint: the resumed run logs steps 6 and 8 again, into the same runs
    shutil.rmtree(run_dir / "checkpoints" / "step_00000008")
    (run_dir / "model.safetensors").unlink()
    vaekit.train(resume=run_dir)
    assert json.loads((run_dir / "trackers.json").read_text()) == ids  # the same tracker runs

    records = train_records(run_dir)
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    # W&B: two offline pieces of one run id; every scalar at its step; the sample grids as images
    run_ids, rows = wandb_history(run_dir)
    assert run_ids == {ids["wandb"]["id"]} and len(list(run_dir.glob("wandb/offline-run-*"))) == 2
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        by_step.setdefault(row["_step"], {}).update(row)
    for record in records:
        for key in ("loss", "recon", "kl", "lr"):
            assert by_step[record["step"]][f"train/{key}"] == pytest.approx(record[key], rel=1e-6), (record["step"], key)
    images = {k.rsplit("/", 1)[0] for row in rows for k in row if k.endswith("/_type") and row[k] == "image-file"}
    assert images == {"samples/recon", "samples/prior"}
    assert len(list(run_dir.glob("wandb/offline-run-*/files/media/images/**/*.png"))) == 12  # 2 grids × (4 + 2)
    # MLflow: the same run, finished, every scalar, the images as artifacts, the config as params
    client = MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"])
    run = client.get_run(ids["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.batch_size"] == "32"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train.loss")]
    assert sorted(s for s, _ in history) == [2, 4, 6, 6, 8, 8]  # logged again after the resume: the same values
    loss = {r["step"]: r["loss"] for r in records}
    assert all(v == pytest.approx(loss[s], rel=1e-6) for s, v in history)
    val_steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val.kl")})
    assert val_steps == [2, 4, 6, 8]
    grids = [f.path for f in client.list_artifacts(run.info.run_id, "samples/recon")]
    assert grids == [f"samples/recon/step_{s:08d}.png" for s in (2, 4, 6, 8)]


def test_a_failed_run_closes_its_tracker_runs_as_failed(tmp_path: Path) -> None:
    cfg = LogConfig(**{**LOG, "tensorboard": False})
    tracker = Tracker(tmp_path, cfg, enabled=True, multi_stage=False, config={"a": 1})
    ids = json.loads((tmp_path / "trackers.json").read_text())
    with pytest.raises(RuntimeError):
        try:
            tracker.log({"step": 1, "epoch": 0, "stage": "train", "split": "train", "loss": 1.5})
            raise RuntimeError("boom")
        finally:
            tracker.close()
    client = MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"])
    assert client.get_run(ids["mlflow"]["run_id"]).info.status == "FAILED"
    _, rows = wandb_history(tmp_path)
    assert [r["train/loss"] for r in rows if "train/loss" in r] == [1.5]
