"""The data contracts: `DataInfo`, `DataBundle`, the two kinds of source, and seeded splits.

A source is either in memory (`ArraySource`: one tensor, batches gathered with one index op) or streaming
(`FileSource`: a `torch.utils.data.Dataset` decoding one sample per `__getitem__`). Streaming sources draw their
augmentation from a generator seeded by (seed, epoch, index), so a sample's augmentation does not depend on the
number of workers, the process, or whether the run was resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vaekit.errors import ConfigError
from vaekit.errors import DataError as DataError  # re-exported: sources raise it

Modality = Literal["image", "video", "audio", "tabular"]


@dataclass
class DataInfo:
    """What the rest of vaekit needs to know about a data set.

    Attributes:
        modality: "image" | "video" | "audio" | "tabular".
        shape: per-sample shape: image (C, H, W), video (C, T, H, W), audio (C, L), tabular (D,).
        n_train, n_val: samples per split.
        value_range: (low, high) of the values of ``x``.
        factor_names: names of the columns of ``y`` (labels or generative factors), None without ``y``.
        skipped: files skipped as corrupt or unreadable (``data.on_error: skip``).
        description: a one-line summary for logs, e.g. "shapes: 18000 train / 2000 val, (1, 64, 64), ...".
        n_test: samples in the test split (0 without one).
        meta: JSON-able facts the run directory must keep to read the model's output (a tag vocabulary, item
            names, normalisation statistics, the sample rate). The engine writes them to ``data_meta.json``.
    """

    modality: Modality
    shape: tuple[int, ...]
    n_train: int
    n_val: int
    value_range: tuple[float, float]
    factor_names: list[str] | None = None
    skipped: int = 0
    description: str = ""
    n_test: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def data_file(path: str | None, source: str, what: str) -> Path:
    """``data.path`` as an existing file, or one line: a ConfigError when unset (naming ``what`` the source reads),
    a DataError when it is not a file."""
    if path is None:
        raise ConfigError(f"data.path: required for data.source={source} ({what})")
    if not Path(path).is_file():
        raise DataError(f"{path}: data.path is not a file")
    return Path(path)


def describe(name: str, n_train: int, n_val: int, shape: tuple[int, ...], note: str, n_test: int = 0) -> str:
    """The standard summary line: "{name}: {n_train} train / {n_val} val[ / {n_test} test], {shape}, {note}"."""
    test = f" / {n_test} test" if n_test else ""
    return f"{name}: {n_train} train / {n_val} val{test}, {tuple(shape)}, {note}"


class ArraySource:
    """An in-memory source: ``x (N, ...)`` float32 and optional ``y (N, ...)``.

    Batches are gathered with one index op (`get_batch`); no DataLoader, no per-sample Python.
    """

    def __init__(self, x: Tensor, y: Tensor | None = None) -> None:
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x = x.to(torch.float32).contiguous()  # (N, ...)
        self.y = None if y is None else y.contiguous()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        out = {"x": self.x[i]}
        if self.y is not None:
            out["y"] = self.y[i]
        return out

    def get_batch(self, idx: Tensor, labels: bool = True) -> dict[str, Tensor]:
        """Gather the samples at ``idx`` (a LongTensor, moved to the data's device); ``labels=False`` skips y."""
        idx = idx.to(self.x.device)
        out = {"x": self.x[idx]}
        if labels and self.y is not None:
            out["y"] = self.y[idx]
        return out

    def to(self, device: torch.device | str) -> ArraySource:
        """A copy on ``device`` (e.g. keep a small data set on the GPU and gather there)."""
        return ArraySource(self.x.to(device), None if self.y is None else self.y.to(device))


class FileSource(Dataset):
    """Base of streaming sources: subclasses implement ``__len__`` and ``__getitem__(i) -> dict``.

    Random augmentation must come only from ``self.generator(i)``, which is seeded from (seed, epoch, index):
    the same sample gets the same augmentation whatever the worker count, rank or resume point.
    """

    def __init__(self, seed: int = 0, augment: bool = False) -> None:
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation `generator` draws (call before creating workers)."""
        self.epoch = epoch

    def generator(self, index: int) -> torch.Generator:
        """A generator seeded from (seed, epoch, index)."""
        key = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + index) % (2**63 - 1)
        return torch.Generator().manual_seed(key)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        raise NotImplementedError


Source = ArraySource | FileSource


@dataclass
class DataBundle:
    """The train and validation sources and their `DataInfo`."""

    train: Source
    val: Source
    info: DataInfo
    test: Source | None = None
    """The test split, evaluated once at the end of training (None: the source has none)."""


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)``.

    Returns:
        (train_idx, val_idx), each sorted ascending; ``len(val_idx) == ceil(n * val_fraction)`` (0 when the
        fraction is 0), and at least one training sample is kept when n > 0.
    """
    n_val = min(math.ceil(n * val_fraction), max(n - 1, 0))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def split_three(n: int, split: list[float] | None, val_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The seeded train/val/test split every source uses.

    Args:
        n: the number of samples.
        split: ``data.split``, ``[train, val, test]`` fractions; None: ``val_fraction`` and no test set.
        val_fraction: ``data.val_fraction`` (used when ``split`` is None).
        seed: the run seed.

    Returns:
        (train_idx, val_idx, test_idx), each sorted. The validation set is ``ceil(n * val)`` samples and the
        test set ``ceil(n * test)`` (at least one training sample is kept unless the train share is 0: then
        everything goes to validation and test, for evaluation only); with ``split=[1 - f, f, 0]`` the train and
        validation sets are exactly those of ``split_indices(n, f, seed)``.
    """
    if split is None:
        tr, va = split_indices(n, val_fraction, seed)
        return tr, va, torch.zeros(0, dtype=torch.long)
    keep = 1 if split[0] > 0 else 0
    n_val = min(math.ceil(n * split[1]), max(n - keep, 0))
    n_test = n - n_val if not keep else min(math.ceil(n * split[2]), max(n - 1 - n_val, 0))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    return train.sort().values, val.sort().values, test.sort().values


def match_channels(x: Tensor, channels: int | None) -> Tensor:
    """Convert ``x (N, C, ...)`` to ``channels`` (1: luminance of RGB; 3: gray repeated); None keeps C."""
    c = x.shape[1]
    if channels is None or channels == c:
        return x
    if channels == 3 and c == 1:
        return x.expand(-1, 3, *x.shape[2:]).contiguous()
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, *([1] * (x.ndim - 2)))
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"data.channels: must be 1 or 3 (got {channels}; the data has {c} channels)")
