"""SIGINT/SIGTERM (Ctrl-C, a preempted job) end the run at the next step boundary with a checkpoint; a second
signal interrupts at once."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from vaekit.engine.runtime import Runtime


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived: the run saved a checkpoint at the end of the current step and stopped."""


class StopSignal:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():

            def handler(signum: int, frame: Any) -> None:
                if self.signum is not None:
                    raise KeyboardInterrupt
                self.signum = signum

            self.previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self, sync_point: bool) -> bool:
        """Whether a signal asked to stop; with several processes they agree on logging steps (one sync)."""
        if self.rt.world == 1:
            return self.signum is not None
        if not sync_point:
            return False
        flag = torch.tensor(float(self.signum is not None), device=self.rt.device)
        return self.rt.reduce_sum(flag).item() > 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"
