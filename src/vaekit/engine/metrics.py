"""Training metrics: per-step sums kept on the device, written on logging steps and at epoch ends.

Each step adds its loss terms to ``window`` (one stacked add, no host sync); a logging step, an epoch end or a
checkpoint folds the window into the logging and epoch meters and reads them (one sync, reduced over processes).
The non-finite watch finds the first bad step at those same points. Logging decides its own cadence
(``log.every``) and never changes what is trained.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from vaekit.engine.runtime import Runtime
from vaekit.engine.state import Meter, NonFiniteWatch, TrainState
from vaekit.errors import NonFiniteLossError
from vaekit.tracking.tracker import Tracker


class TrainMetrics:
    """The train-side meters, the non-finite watch and the train records of ``metrics.jsonl``."""

    def __init__(self, runtime: Runtime, nan_policy: str, skip_limit: float = 0.5) -> None:
        self.rt = runtime
        self.nan_policy = nan_policy
        self.skip_limit = skip_limit
        dev = runtime.device
        self.window, self.log_meter, self.epoch_meter = Meter(dev), Meter(dev), Meter(dev)
        self.watch = NonFiniteWatch(dev)
        self.tracker: Tracker | None = None
        self.last_log = (time.time(), 0)
        self.where: dict[str, Any] = {}
        self.last_good: str = "no checkpoint had been written yet"

    # per step ------------------------------------------------------------------------------------
    def record(self, step: int, terms: dict[str, torch.Tensor], count: int) -> None:
        """Add one micro-batch's terms. Under ``nan_policy=skip`` a non-finite batch is not averaged in (this
        policy syncs every step)."""
        values = torch.stack(list(terms.values()))  # the objectives return detached fp32 0-d terms
        if self.nan_policy == "skip" and self.rt.scaler is None and not bool(torch.isfinite(values).all()):
            return
        self.watch.observe(step, values)
        self.window.add(tuple(terms), values, count)

    def extra(self, values: dict[str, torch.Tensor]) -> None:
        """Per-step diagnostics of a logging step (learning rates, gradient norms)."""
        self.window.add(tuple(values), torch.stack([v.float().to(self.rt.device) for v in values.values()]))

    def fold(self) -> None:
        if self.window:
            self.log_meter.merge(self.window)
            self.epoch_meter.merge(self.window)
            self.window.reset()

    # blocks --------------------------------------------------------------------------------------
    def maybe_log(self, state: TrainState, every: int, samples_per_step: int) -> dict[str, float] | None:
        """On logging steps: the means since the last log, written as a ``train`` record."""
        if state.step % every:
            return None
        self.check_finite(state)
        now = time.time()
        self.fold()
        means = self.log_meter.means(self.rt.reduce)
        self.log_meter.reset()
        then, last_step = self.last_log
        means["samples_per_sec"] = (state.step - last_step) * samples_per_step / max(now - then, 1e-9)
        self.last_log = (now, state.step)
        self.write({**self.where, "step": state.step, "epoch": state.epoch, "split": "train", **means}, state)
        return means

    def epoch_record(self, state: TrainState) -> None:
        self.fold()
        if not self.epoch_meter:
            return
        means = self.epoch_meter.means(self.rt.reduce)
        self.epoch_meter.reset()
        self.write({**self.where, "step": state.step, "epoch": state.epoch, "split": "train", "kind": "epoch", **means}, state)

    def write(self, record: dict[str, Any], state: TrainState) -> None:
        if self.tracker is not None:
            self.tracker.log(record)
            state.records = len(self.tracker.records)

    def reset(self) -> None:
        for meter in (self.window, self.log_meter, self.epoch_meter):
            meter.reset()

    # non-finite ----------------------------------------------------------------------------------
    def check_finite(self, state: TrainState) -> None:
        """Raise (on every process) if any process saw a non-finite loss term (stop policy), or if too many
        batches were skipped (skip policy). One host sync."""
        first = self.watch.first_bad()
        flag = self.rt.reduce_sum((first >= 0).float())
        if flag.item() > 0 and self.nan_policy == "stop":
            step = int(first.item())
            recent = {**self.log_meter.means(), **self.window.means()}  # NaN/Inf persist in these sums
            names = sorted(k for k, v in recent.items() if not math.isfinite(v)) or ["(on another process)"]
            step = step if step >= 0 else state.step - 1
            raise NonFiniteLossError(
                f"non-finite loss at step {step + 1} in term(s) {', '.join(names)}; {self.last_good}"
            )
        if self.nan_policy == "skip" and state.step >= 10 and state.skipped_batches > self.skip_limit * state.step:
            raise NonFiniteLossError(
                f"skipped {state.skipped_batches} of {state.step} steps with non-finite losses (more than "
                f"train.nan_skip_limit={self.skip_limit:g} of them); {self.last_good}"
            )

    def check_weights(self, named: dict[str, list[tuple[str, torch.Tensor]]], state: TrainState) -> None:
        """A finite loss can still come with an overflowing step: check the weights, the buffers (BatchNorm
        statistics) and the optimizer state too (one sync; the names are looked up only when one is bad).

        Args:
            named: ``{owner: [(name, tensor), ...]}``, e.g. ``{"model": model.named_parameters(), ...}``.
        """
        tensors = [t for pairs in named.values() for _, t in pairs if t.is_floating_point() or t.is_complex()]
        if not tensors:
            return
        ok = torch.stack([torch.isfinite(t).all().to(tensors[0].device) for t in tensors]).all()
        bad = self.rt.reduce_sum((~ok).float())
        if bool(bad > 0):
            where = [f"{owner}: {name}" for owner, pairs in named.items() for name, t in pairs
                     if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
            shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
            raise NonFiniteLossError(
                f"non-finite values after step {state.step} in {shown or '(on another process)'}; {self.last_good}"
            )

    def check_validation(self, means: dict[str, float], state: TrainState) -> None:
        """Under ``nan_policy=stop``, a non-finite validation loss term stops the run like a training one."""
        bad = sorted(k for k, v in means.items() if not math.isfinite(v))
        if bad and self.nan_policy == "stop":
            raise NonFiniteLossError(
                f"non-finite validation loss at step {state.step} in term(s) {', '.join(bad)}; {self.last_good}"
            )
