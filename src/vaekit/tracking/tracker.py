"""Where metrics go: ``metrics.jsonl``, TensorBoard, optional W&B / MLflow, and the console.

Only the main process writes. Every record is a flat dict with ``step``, ``epoch``, ``stage``, ``split`` and the
loss terms; TensorBoard tags are ``{split}/{term}``, grouped under ``{stage}/`` when the run has several stages.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vaekit.config.schema import LogConfig

META = ("step", "epoch", "stage", "stage_index", "split", "time", "kind")


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        cfg: LogConfig,
        enabled: bool,
        multi_stage: bool,
        config: dict[str, Any],
        resume_step: int | None = None,
        resume_records: int | None = None,
    ):
        self.run_dir = run_dir
        self.cfg = cfg
        self.enabled = enabled
        self.multi_stage = multi_stage
        self.records: list[dict[str, Any]] = []
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._mlflow = None
        if not enabled:
            return
        if resume_step is not None:
            self._truncate(resume_step, resume_records)
        if cfg.jsonl:
            self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 (closed in close())
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None  # drop events logged after the checkpoint
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if cfg.wandb:
            import wandb  # optional dependency: pip install vaekit[wandb]

            self._wandb = wandb.init(dir=str(run_dir), config=config, name=run_dir.name, resume="allow")
        if cfg.mlflow:
            import mlflow  # optional dependency: pip install vaekit[mlflow]

            mlflow.start_run(run_name=run_dir.name)
            self._mlflow = mlflow

    def _truncate(self, step: int, count: int | None) -> None:
        """On resume: keep exactly the records written before the checkpoint (the first ``count``; by step when
        the checkpoint does not know the count); later ones will be logged again. ``step < 0``: keep none."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        records = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a line cut by a kill: nothing after it was written completely
        if count is not None:
            records = records[:count]
        records = [r for r in records if isinstance(r, dict) and r.get("step", step + 1) <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        tmp.replace(path)
        self.records = records

    def _tag(self, record: dict[str, Any], key: str) -> str:
        split = "train_epoch" if record.get("kind") == "epoch" else record["split"]
        tag = f"{split}/{key}"
        return f"{record['stage']}/{tag}" if self.multi_stage else tag

    def log(self, record: dict[str, Any]) -> None:
        """Write one record everywhere (main process only)."""
        record = {"time": round(time.time(), 3), **record}
        self.records.append(record)
        if not self.enabled:
            return
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        if record.get("kind") == "epoch":
            return  # epoch means are for the run's history; the scalars above already show the same terms
        scalars = {k: v for k, v in record.items() if k not in META and isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(self._tag(record, key), value, record["step"])
        if self._wandb is not None:
            self._wandb.log({self._tag(record, k): v for k, v in scalars.items()}, step=record["step"])
        if self._mlflow is not None:
            clean = {self._tag(record, k).replace("/", "."): v for k, v in scalars.items() if math.isfinite(v)}
            self._mlflow.log_metrics(clean, step=record["step"])

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        """An image (3, H, W) in [0, 1] to TensorBoard / W&B."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_image(tag, img, step)
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(img.permute(1, 2, 0).numpy())}, step=step)

    def audio(self, tag: str, wave: torch.Tensor, step: int, sample_rate: int) -> None:
        """A waveform (C, L) in [-1, 1] to TensorBoard (first channel)."""
        if self.enabled and self._tb is not None:
            self._tb.add_audio(tag, wave.detach().float().cpu()[:1].clamp(-1, 1), step, sample_rate=sample_rate)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


class Console:
    """A tqdm progress bar (step, loss, it/s, ETA) and one line per validation; silent off the main process."""

    def __init__(self, enabled: bool, progress: bool):
        self.enabled = enabled
        self.progress = progress and enabled
        self.bar = None

    def start_stage(self, desc: str, total: int | None, initial: int) -> None:
        self.close()
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1, postfix: dict[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def set_description(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
