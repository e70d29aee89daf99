"""Training state that must survive a restart, and on-device meters that keep the step free of host syncs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    """Where the run is. Saved in every checkpoint's ``state.json``; resume continues from exactly here."""

    step: int = 0
    """Optimizer steps done in the whole run."""
    stage_index: int = 0
    stage_name: str = ""
    stage_step: int = 0
    """Optimizer steps done in the current stage."""
    epoch: int = 0
    """Epoch within the current stage (0-based: the epoch in progress)."""
    batch_in_epoch: int = 0
    """Global batches of the current epoch already consumed."""
    stage_done: bool = False
    frozen: list[str] = field(default_factory=list)
    skipped_batches: int = 0
    """Non-finite batches skipped (``train.nan_policy: skip``)."""
    clock: dict[str, Any] = field(default_factory=dict)
    records: int = 0
    """Records written to ``metrics.jsonl`` up to this point (a resume truncates the file to them)."""
    last_val_step: int = -1
    elapsed: float = 0.0
    """Training wall time before this process started (seconds)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def state_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def load_state_dict(self, data: dict[str, Any]) -> None:
        for key, value in TrainState.from_dict(data).to_dict().items():
            setattr(self, key, value)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Meter:
    """Sums of loss terms kept on the device; read (one host sync, reduced over processes) only when logging.

    Terms arrive as one stacked vector per step (one add, whatever the number of terms); they are grouped by
    their key tuple because the set of terms can change (the discriminator's terms start at its start step).
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.buckets: dict[tuple[str, ...], list] = {}  # keys → [sum vector, count]
        self.device = device

    def add(self, keys: tuple[str, ...], values: torch.Tensor, count: float = 1.0) -> None:
        bucket = self.buckets.get(keys)
        if bucket is None:
            self.buckets[keys] = [values.detach().float() * count, count]
        else:
            bucket[0].add_(values, alpha=count)
            bucket[1] += count

    def merge(self, other: Meter) -> None:
        """Add another meter's sums into this one (a few ops per flush, not per step)."""
        for keys, (vec, n) in other.buckets.items():
            bucket = self.buckets.get(keys)
            if bucket is None:
                self.buckets[keys] = [vec.clone(), n]
            else:
                bucket[0].add_(vec)
                bucket[1] += n

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def _flat(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        names, sums, counts = [], [], []
        for keys, (vec, n) in self.buckets.items():
            names.extend(keys)
            sums.append(vec)
            counts.append(torch.full_like(vec, n))
        return names, torch.cat(sums), torch.cat(counts)

    def means(self, reduce: Any = None) -> dict[str, float]:
        """Averages per term; ``reduce`` (``accelerator.reduce``) sums over processes first. One host sync."""
        if not self.buckets:
            return {}
        names, sums, counts = self._flat()
        if reduce is not None:
            sums, counts = reduce(sums, reduction="sum"), reduce(counts, reduction="sum")
        out: dict[str, list[float]] = {}
        for name, s, n in zip(names, sums.tolist(), counts.tolist(), strict=True):
            acc = out.setdefault(name, [0.0, 0.0])
            acc[0] += s
            acc[1] += n
        return {k: s / n for k, (s, n) in out.items() if n > 0}

    def reset(self) -> None:
        self.buckets.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"buckets": [[list(k), v.tolist(), n] for k, (v, n) in self.buckets.items()]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        device = device or self.device
        self.buckets = {
            tuple(k): [torch.tensor(v, device=device), n] for k, v, n in state.get("buckets", [])
        }


class NonFiniteWatch:
    """Finds the first step whose loss terms were not finite, for one tiny op per step.

    Each step's terms are summed (NaN and Inf persist in a sum) and the 0-d sum is kept; ``first_bad`` stacks them
    at the next check (a logging step or a checkpoint), so the step costs no host sync. Which terms were bad is
    read from the logging window's sums.
    """

    def __init__(self, device: torch.device, limit: int = 1024):
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.limit = limit
        self._steps: list[int] = []
        self._sums: list[torch.Tensor] = []

    def observe(self, step: int, values: torch.Tensor) -> None:
        self._steps.append(step)
        self._sums.append(values.sum())
        if len(self._sums) >= self.limit:  # bound the memory when checks are rare
            self._collapse()

    def _collapse(self) -> None:
        if not self._sums:
            return
        bad = ~torch.isfinite(torch.stack(self._sums))
        steps = torch.tensor(self._steps, device=bad.device)
        first_here = torch.where(bad, steps, torch.iinfo(torch.long).max).min()
        found = bad.any() & (self.first < 0)
        self.first = torch.where(found, first_here, self.first)
        self._steps.clear()
        self._sums.clear()

    def first_bad(self) -> torch.Tensor:
        """The first non-finite step as a 0-d tensor (-1: none), still on the device."""
        self._collapse()
        return self.first
