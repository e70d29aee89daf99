"""Data passed from Python: a map-style ``Dataset``, a ``DataLoader``, or arrays (``from_arrays``).

A ``Dataset`` item may be a tensor (or array), an ``(x, y)`` tuple, or a dict with ``"x"`` (and ``"y"``); it is
batched by vaekit's own ``BatchLoader`` (seeded global order, exact mid-epoch resume, N processes like one).
A ``DataLoader`` is iterated as the user built it: resume is exact at epoch boundaries and skips ahead inside an
epoch (its batches after a resume are the same only if its sampler is seeded per epoch, e.g. through
``set_epoch``, which vaekit calls when the sampler has it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vaekit.data.base import ArraySource, DataBundle, DataInfo, FileSource, describe, split_indices
from vaekit.data.tensors import EXPECTED_RANGE, MODALITIES, from_arrays
from vaekit.errors import DataError


def _describe(value: Any) -> str:
    if isinstance(value, Tensor | np.ndarray):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return type(value).__name__


def normalize_item(item: Any, where: str) -> dict[str, Tensor]:
    """One data item as ``{"x": float tensor, "y": ...}``, or a one-line ``DataError`` naming ``where``."""
    if isinstance(item, Mapping):
        if "x" not in item:
            raise DataError(f"{where}: a dict item needs an 'x' key (found keys {sorted(map(str, item))[:8]})")
        x, y = item["x"], item.get("y")
    elif isinstance(item, tuple | list):
        if len(item) not in (1, 2):
            raise DataError(f"{where}: a tuple item must be (x,) or (x, y); got {len(item)} elements")
        x, y = item[0], item[1] if len(item) == 2 else None
    else:
        x, y = item, None
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor) or not (x.is_floating_point() or x.dtype in (torch.uint8, torch.bool, torch.int64, torch.int32)):
        raise DataError(
            f"{where}: expected a tensor, an (x, y) tuple or a dict with 'x' holding a numeric tensor; got {_describe(x)}"
        )
    x = x.detach().float() / 255.0 if x.dtype == torch.uint8 else x.detach().float()
    out = {"x": x}
    if y is not None:
        out["y"] = torch.as_tensor(y)
    return out


def _info_from_sample(x: Tensor, n_train: int, n_val: int, name: str) -> DataInfo:
    """The DataInfo of a per-sample tensor ``x`` (modality from its number of dims)."""
    modality = MODALITIES.get(x.ndim + 1)
    if modality is None:
        raise DataError(
            f"{name}: items of shape {tuple(x.shape)}; expected tabular (D,), audio (C, L), image (C, H, W) "
            "or video (C, T, H, W)"
        )
    lo, hi = EXPECTED_RANGE.get(modality, (float(x.min()), float(x.max())))
    return DataInfo(
        modality=modality,
        shape=tuple(x.shape),
        n_train=n_train,
        n_val=n_val,
        value_range=(lo, hi),
        description=describe(name, n_train, n_val, tuple(x.shape), f"{modality} from Python"),
    )


class DatasetSource(FileSource):
    """A user's map-style ``Dataset`` (optionally a subset of its indices) as a streaming source."""

    def __init__(self, dataset: Dataset, indices: Tensor | None = None, name: str = "train_data") -> None:
        super().__init__()
        self.dataset = dataset
        self.indices = indices
        self.name = name

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        j = int(self.indices[i]) if self.indices is not None else i
        return normalize_item(self.dataset[j], f"{self.name}[{j}]")


class LoaderSource:
    """A user's ``DataLoader``: iterated as built, batches normalised like dataset items."""

    def __init__(self, loader: DataLoader, name: str) -> None:
        self.loader = loader
        self.name = name
        self.item_shape: tuple[int, ...] | None = None
        """The items' shape, from the first batch: every later batch must match it."""

    def __len__(self) -> int:
        dataset = getattr(self.loader, "dataset", None)
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            return 0

    def batches(self) -> Iterator[dict[str, Tensor]]:
        for i, batch in enumerate(self.loader):
            item = normalize_item(batch, f"{self.name} batch {i}")
            shape = tuple(item["x"].shape[1:])
            if self.item_shape is None:
                self.item_shape = shape
            elif shape != self.item_shape:
                raise DataError(f"{self.name}: batch {i} holds items of shape {shape}, the first batch {self.item_shape}; "
                                "every batch must have the same item shape")
            yield item

    def first(self, n: int) -> Tensor:
        """Up to ``n`` samples from the start of the loader (for sample grids)."""
        xs, count = [], 0
        for batch in self.batches():
            xs.append(batch["x"])
            count += len(batch["x"])
            if count >= n:
                break
        if not xs:
            raise DataError(f"{self.name}: the DataLoader yields no batches (an empty dataset?)")
        return torch.cat(xs)[:n]


class LoaderBatches:
    """``BatchLoader``'s interface over a user ``DataLoader`` (one process; no global order of its own)."""

    def __init__(self, source: LoaderSource) -> None:
        self.source = None  # the number of samples is not known for exact validation slicing
        self.user = source
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for obj in (getattr(self.user.loader, "sampler", None), getattr(self.user.loader, "batch_sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.user.loader)

    def iter_from(self, start_batch: int = 0) -> Iterator[dict[str, Tensor]]:
        """The loader's batches from ``start_batch`` on (the earlier ones are drawn and dropped)."""
        for i, batch in enumerate(self.user.batches()):
            if i >= start_batch:
                yield batch

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.iter_from(0)


def _is_array(obj: Any) -> bool:
    return isinstance(obj, Tensor | np.ndarray) or (isinstance(obj, list | tuple) and obj and not isinstance(obj[0], Mapping))


def from_python(train_data: Any, val_data: Any, val_fraction: float, seed: int, num_samples: int | None) -> DataBundle:
    """A ``DataBundle`` from objects passed to ``vaekit.train``.

    Args:
        train_data: a map-style ``Dataset``, a ``DataLoader``, or an array/tensor ``(N, ...)``.
        val_data: the same kinds, or None for a seeded ``val_fraction`` split of ``train_data`` (not possible
            for a ``DataLoader``: give ``val_data`` then).
    """
    if isinstance(train_data, Tensor | np.ndarray):
        val = val_data if isinstance(val_data, Tensor | np.ndarray) or val_data is None else None
        if val_data is not None and val is None:
            raise DataError("val_data: with array train_data, give val_data as an array too")
        return from_arrays(train_data, val_fraction=val_fraction, seed=seed, val_x=val, num_samples=num_samples)
    if isinstance(train_data, DataLoader):
        train: Any = LoaderSource(train_data, "train_data")
        if val_data is None:
            raise DataError("val_data: a DataLoader as train_data needs val_data (a Dataset, a DataLoader or an array)")
        sample = train.first(1)[0]
    elif isinstance(train_data, Dataset) or hasattr(train_data, "__getitem__") and hasattr(train_data, "__len__"):
        n = len(train_data)
        if n == 0:
            raise DataError("train_data: the dataset is empty")
        indices = torch.arange(min(n, num_samples)) if num_samples else None
        if val_data is None:
            tr, va = split_indices(len(indices) if indices is not None else n, val_fraction, seed)
            base = indices if indices is not None else torch.arange(n)
            train = DatasetSource(train_data, base[tr], "train_data")
            val_data = DatasetSource(train_data, base[va], "train_data")
        else:
            train = DatasetSource(train_data, indices, "train_data")
        sample = train[0]["x"]
    else:
        raise DataError(
            f"train_data: expected a map-style Dataset, a DataLoader or an array/tensor; got {_describe(train_data)}"
        )
    val = _as_source(val_data, "val_data")
    val_x = val.first(1)[0] if isinstance(val, LoaderSource) else (val[0]["x"] if len(val) else sample)
    if tuple(val_x.shape) != tuple(sample.shape):
        raise DataError(f"val_data: items of shape {tuple(val_x.shape)} differ from train_data's {tuple(sample.shape)}")
    info = _info_from_sample(sample, len(train), len(val), "python data")
    return DataBundle(train, val, info)


def _as_source(obj: Any, name: str) -> Any:
    if isinstance(obj, DatasetSource | LoaderSource | ArraySource):
        return obj
    if isinstance(obj, DataLoader):
        return LoaderSource(obj, name)
    if isinstance(obj, Tensor | np.ndarray):
        return from_arrays(obj, val_x=obj[:1]).train
    if isinstance(obj, Dataset) or hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        return DatasetSource(obj, None, name)
    raise DataError(f"{name}: expected a map-style Dataset, a DataLoader or an array/tensor; got {_describe(obj)}")
