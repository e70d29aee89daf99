"""Stages at run time: when each one ends (``StageClock``). Resolving and checking stages is configuration
(``vaekit.config.stages``, re-exported here)."""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vaekit.config.schema import StageConfig
from vaekit.config.stages import GROUPS, RUN_WIDE_TRAIN_KEYS, SECTIONS, Stage, check_stages, resolve_stages
from vaekit.objectives.terms import produced_metrics

__all__ = [
    "GROUPS", "RUN_WIDE_TRAIN_KEYS", "SECTIONS", "Stage", "StageClock", "check_stages", "produced_metrics",
    "resolve_stages",
]


# ------------------------------------------------------------------------------------ the clock
@dataclass
class StageClock:
    """Decides when a stage ends. Fed once per optimizer step (train metrics) and per validation."""

    spec: StageConfig
    steps_per_epoch: int
    smoothing: int = 20
    _window: deque = field(default_factory=deque, repr=False)
    _history: list[float] = field(default_factory=list, repr=False)
    _steps: list[int] = field(default_factory=list, repr=False)

    def limit_steps(self) -> int | None:
        """The hard cap in optimizer steps (the length, or the safety limit of a metric stage)."""
        spec = self.spec
        caps = []
        for steps, epochs in ((spec.steps, spec.epochs), (spec.max_steps, spec.max_epochs)):
            if steps is not None:
                caps.append(steps)
            if epochs is not None:
                caps.append(epochs * self.steps_per_epoch)
        return min(caps) if caps else None

    def epochs_done(self, epoch: int) -> str | None:
        """"length" once ``epoch`` epochs are done and the stage (or its safety limit) is counted in epochs."""
        spec = self.spec
        if any(e is not None and epoch >= e for e in (spec.epochs, spec.max_epochs)):
            return "length"
        return None

    def end_message(self, reason: str, step: int) -> str | None:
        """What to tell the user about how the stage ended (None: it simply ran its length)."""
        spec = self.spec
        if reason == "length":
            if (spec.metric is not None or spec.plateau_window is not None) and spec.epochs is None and spec.steps is None:
                return f"warning: stage {spec.name!r} hit its safety limit before {spec.metric!r} met its transition"
            return None
        return f"stage {spec.name!r} ends at step {step}: {reason}"

    def observe(self, name: str, value: float, step: int | None = None) -> None:
        """One value of a metric at optimizer ``step`` (None: the observation's index, for tests)."""
        if name != self.spec.metric or not math.isfinite(value):
            return
        self._window.append(value)
        if len(self._window) > self.smoothing:
            self._window.popleft()
        self._history.append(sum(self._window) / len(self._window))
        self._steps.append(step if step is not None else len(self._steps))

    def metric_done(self) -> str | None:
        """A reason string when the threshold or plateau rule says the stage is over, else None."""
        spec = self.spec
        if not self._history:
            return None
        current = self._history[-1]
        if spec.threshold is not None:
            crossed = current <= spec.threshold if spec.mode == "below" else current >= spec.threshold
            if crossed:
                return f"{spec.metric} {current:.4g} crossed {spec.threshold:g}"
        if spec.plateau_window is not None:
            # plateau_window counts optimizer steps: compare with the newest value at least that many steps old
            i = bisect.bisect_right(self._steps, self._steps[-1] - spec.plateau_window) - 1
            if i >= 0:
                old = self._history[i]
                sign = 1.0 if spec.mode == "below" else -1.0
                gain = sign * (old - current) / max(abs(old), 1e-12)
                if gain < (spec.plateau_threshold or 1e-3):
                    return f"{spec.metric} improved {gain:.2%} over the last {spec.plateau_window} steps"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self._window), "history": list(self._history), "steps": list(self._steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._window = deque(state.get("window", []))
        self._history = list(state.get("history", []))
        self._steps = list(state.get("steps", range(len(self._history))))


# ------------------------------------------------------------------------------------ init_from
def init_from_weights(source: str, where: str = "init_from") -> Any:
    """The weights file a stage's ``init_from`` names (a run directory: its export, else its newest checkpoint;
    a checkpoint directory; or a ``.safetensors`` file), checked to be a readable safetensors file.

    Raises:
        ConfigError: nothing there, or not a safetensors file; names ``where``.
    """
    from pathlib import Path

    from safetensors import safe_open

    from vaekit.engine.checkpoint import latest_checkpoint
    from vaekit.errors import ConfigError

    path = Path(source)
    if path.is_dir():  # a run directory (its export, else its latest checkpoint) or one checkpoint
        latest = latest_checkpoint(path / "checkpoints")
        exported = path / "model.safetensors"
        path = exported if exported.is_file() or latest is None else latest / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"{where}: {source!r} has no model.safetensors")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as err:  # noqa: BLE001 (safetensors raises several kinds)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"{where}: {str(path)!r} is not a readable safetensors weights file ({first})") from None
    return path


def check_init_from(stages: list[Stage]) -> None:
    """Every stage's ``init_from`` names readable weights, checked before training starts (not when the stage
    begins, maybe hours later)."""
    for stage in stages:
        if stage.spec.init_from:
            init_from_weights(stage.spec.init_from, f"stages.{stage.index}.init_from ({stage.name})")
