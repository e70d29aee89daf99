"""A run: build data, model and engine once, then drive the engine through the stages, then export.

The pipeline owns what changes between stages — data, freezing, objective, optimizers, the stage clock — and
hands each stage to the engine as a ``Plan``. The engine never imports this package. Each job has its module:
building the run (`vaekit.pipeline.build`), planning a stage (`vaekit.pipeline.plan`), finishing the run
(`vaekit.pipeline.finish`); this one is the driver.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vaekit.config.schema import VaekitConfig
from vaekit.engine import checkpoint as ckpt
from vaekit.engine.checkpoint import RNGState
from vaekit.engine.loop import Trainer
from vaekit.errors import RunDirError
from vaekit.models import count_parameters, model_summary
from vaekit.models.adapter import export_module
from vaekit.pipeline.build import RunParts, build_run
from vaekit.pipeline.finish import finish_run
from vaekit.pipeline.plan import plan_stage
from vaekit.tracking.tracker import Tracker

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}
"""Write failures of the disk under the run (full, over quota, read-only, failing): one line, resume later."""


@dataclass
class Outcome:
    run_dir: Path
    config: VaekitConfig
    trainer: Trainer
    records: list[dict[str, Any]]
    summary: dict[str, Any]


class Pipeline:
    """A run: everything built once (`build_run`), then one `Plan` per stage driven through `Trainer.fit`, then
    the finish (`finish_run`).

    Args:
        cfg: the validated config.
        model: a user ``nn.Module`` following the protocol (None: build ``cfg.model``).
        data: Python data, ``{"arrays": {...}}`` or ``{"train": ..., "val": ...}`` (None: ``cfg.data`` from files).
        run_dir: the directory of a run to resume (None: a new one from ``cfg.run``).
        resume: continue from the newest complete checkpoint of ``run_dir``.
        hooks: objects the trainer calls at its periodic blocks.
    """

    def __init__(self, cfg: VaekitConfig, model: nn.Module | None = None, data: dict[str, Any] | None = None,
                 run_dir: Path | None = None, resume: bool = False, hooks: list[Any] | None = None) -> None:
        self.parts: RunParts = build_run(cfg, model, data, run_dir, resume, hooks)

    def run(self) -> Outcome:
        p = self.parts
        t, cfg = p.trainer, p.cfg
        t.tracker = None
        try:
            self._start(t)
            loaded = p.loaded is not None
            for stage in p.stages[t.state.stage_index:]:
                resuming = loaded and t.state.stage_index == stage.index
                loaded = False
                plan = plan_stage(p, stage, resuming)
                if resuming and t.state.stage_done:
                    limit = plan.clock.limit_steps()
                    if limit is None or limit <= t.state.stage_step:
                        # the next stage is built as right after an uninterrupted stage end: RNG now, no optimizers
                        t.ckpt.register("local", "rng", RNGState())
                        t.ckpt.pending.clear()
                        continue
                    t.state.stage_done = False  # resumed with a longer length (train.max_steps=...): go on
                t.fit(plan, resuming)
            summary = finish_run(p, plan)
            p.rt.wait()  # every process leaves together once the main one has exported and summarised
        except RuntimeError as err:
            p.rt.check_collective_failure(err, lambda: ckpt.latest_checkpoint(p.run_dir / "checkpoints"))
            raise
        except OSError as err:
            if err.errno not in DISK_ERRNOS:
                raise
            last = ckpt.latest_checkpoint(p.run_dir / "checkpoints")
            raise RunDirError(
                f"cannot write in run directory {str(p.run_dir)!r} ({err.strerror or err}"
                + (f": {err.filename}" if err.filename else "") + f"); the last complete checkpoint is {last}; "
                f"free space and resume with `vaekit train --resume {p.run_dir}`"
            ) from None
        finally:
            t.console.close()
            try:
                if t.tracker is not None:
                    t.tracker.close()
            except OSError:  # a full disk: said above, when it stopped the run
                if sys.exc_info()[0] is None:
                    raise
            if p.lock is not None:
                p.lock.release()
        return Outcome(p.run_dir, cfg, t, list(t.tracker.records), summary)

    def _start(self, t: Trainer) -> None:
        """The tracker (a resume truncates metrics.jsonl/TensorBoard to the checkpoint, to nothing when there was
        none), the first console lines and ``model.txt``."""
        p = self.parts
        resumed_at = t.state.step if p.loaded is not None else (-1 if p.resume else None)
        t.tracker = Tracker(p.run_dir, p.cfg.log, p.rt.is_main, multi_stage=len(p.stages) > 1,
                            config=p.cfg.model_dump(mode="json"), resume_step=resumed_at,
                            resume_records=t.state.records if p.loaded is not None else None)
        t.metrics.tracker = t.tracker
        verb = f"resuming at step {resumed_at} in" if p.loaded is not None else "run directory:"
        t.console.write(f"{verb} {p.run_dir}")
        t.console.write(f"data: {p.info.description}")
        t.console.write(p.rt.describe())
        from vaekit.config.notes import config_warnings

        for line in [p.rt.launch_warning(), *config_warnings(p.cfg)]:
            if line:
                t.console.write(line)
        t.console.write(f"model: {type(export_module(p.model)).__name__}, {count_parameters(p.model):,} parameters")
        if p.rt.is_main and p.loaded is None:
            text = model_summary(export_module(p.model))
            if p.disc is not None:
                text += "\n\ndiscriminator\n" + model_summary(p.disc)
            (p.run_dir / "model.txt").write_text(text + "\n")
