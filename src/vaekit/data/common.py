"""What the file sources share: path checks, the ``data.on_error`` report, non-finite checks, the seeded
train/val/test split into in-memory sources, and per-column normalisation fitted on the training split.

Each file source reads (its own format), validates (with these helpers) and assembles (a `DataBundle`), so a
rule such as "unreadable files stop the build with the first one's name, or are skipped and counted" is written
once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from vaekit.data.base import ArraySource, DataError
from vaekit.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def data_dir(path: str | None, source: str, what: str) -> Path:
    """``data.path`` as an existing directory, or one line: a ConfigError when unset (naming ``what`` the source
    reads), a DataError when it is not a directory."""
    if not path:
        raise ConfigError(f"data.path: required for data.source={source} ({what})")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: data.path is not a directory")
    return root


def report_unreadable(errors: list[str], on_error: str, what: str) -> None:
    """Stop on the first unreadable file (``data.on_error=raise``, one line naming it), or warn once with the
    count and the first few (``skip``)."""
    if not errors:
        return
    if on_error == "raise":
        raise DataError(errors[0] + " (set data.on_error=skip to skip unreadable files)")
    shown = "; ".join(errors[:5]) + (f"; … {len(errors) - 5} more" if len(errors) > 5 else "")
    logger.warning("skipped %d unreadable %s (data.on_error=skip): %s", len(errors), what, shown)


def probe_all(
    items: Iterable[T], probe: Callable[[T], R], on_error: str, what: str, threads: int = 1
) -> tuple[list[R], list[str]]:
    """``probe`` every item (in a thread pool when ``threads > 1``); a DataError is one unreadable file.

    Returns:
        (the probes that succeeded, in order; the error lines). With ``on_error=raise`` the first error stops the
        build instead (see `report_unreadable`).
    """

    def one(item: T) -> R | DataError:
        try:
            return probe(item)
        except DataError as e:
            return e

    items = list(items)
    if threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without the GIL
            results = list(pool.map(one, items))
    else:
        results = [one(i) for i in items]
    errors = [str(r) for r in results if isinstance(r, DataError)]
    report_unreadable(errors, on_error, what)
    return [r for r in results if not isinstance(r, DataError)], errors


def nonfinite_error(x: np.ndarray | Tensor, where: str) -> str | None:
    """None when every value of ``x`` is finite, else "{where}: N NaN/Inf value(s)" (a message fragment)."""
    bad = ~np.isfinite(np.asarray(x))
    if not bad.any():
        return None
    n_nan = int(np.isnan(np.asarray(x)).sum())
    return f"{where}: {int(bad.sum())} non-finite value(s) ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf)"


def three_sources(
    x: Tensor, tr: Tensor | np.ndarray, va: Tensor | np.ndarray, te: Tensor | np.ndarray, y: Tensor | None = None
) -> tuple[ArraySource, ArraySource, ArraySource | None]:
    """In-memory train/val/test sources of ``x`` (and ``y``) at the split indices; no test source when empty."""

    def part(i: Tensor | np.ndarray) -> ArraySource:
        i = torch.as_tensor(i, dtype=torch.long)
        return ArraySource(x[i], None if y is None else y[i])

    return part(tr), part(va), part(te) if len(te) else None


def fit_normalize(x: np.ndarray, train: np.ndarray, mode: str) -> tuple[dict[str, list[float]], Callable]:
    """Per-column statistics of ``x[train]`` for ``data.normalize`` (``standard``, ``minmax`` or ``none``).

    Returns:
        (the statistics for ``data_meta.json``; a function applying them to any array with the same columns,
        e.g. a separate test file). A constant column keeps its scale (std or span 1).
    """
    fit = x[train]
    if mode == "standard":
        mean, std = fit.mean(axis=0), fit.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return {"mean": mean.tolist(), "std": std.tolist()}, lambda a: (a - mean) / std
    if mode == "minmax":
        lo, hi = fit.min(axis=0), fit.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return {"min": lo.tolist(), "max": hi.tolist()}, lambda a: (a - lo) / span
    return {}, lambda a: a
