"""Arrays passed from Python (source ``tensor``): torch tensors or numpy arrays become in-memory sources.

The modality follows ``x.ndim``: 2 → tabular (N, D); 3 → audio (N, C, L); 4 → image (N, C, H, W);
5 → video (N, C, T, H, W). A grayscale image stack must carry its channel axis: (N, 1, H, W).
uint8 input is divided by 255. Float images/video must lie in [0, 1] and audio in [-1, 1] (no silent rescaling).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.data.base import ArraySource, DataBundle, DataInfo, Modality, describe, split_indices

MODALITIES: dict[int, Modality] = {2: "tabular", 3: "audio", 4: "image", 5: "video"}
EXPECTED_RANGE: dict[str, tuple[float, float]] = {
    "image": (0.0, 1.0),
    "video": (0.0, 1.0),
    "audio": (-1.0, 1.0),
}


def _as_x(a: Any, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a)
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    if not (
        t.is_floating_point() or t.dtype in (torch.bool, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise ValueError(f"{name}: unsupported dtype {t.dtype}")
    return t.to(torch.float32)


def _as_y(a: Any | None) -> Tensor | None:
    return None if a is None else torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a)


def _factor_names(y: Tensor | None) -> list[str] | None:
    if y is None:
        return None
    return ["label"] if y.ndim == 1 else [f"y{i}" for i in range(int(np.prod(y.shape[1:])))]


def from_arrays(
    x: Any,
    y: Any | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    val_x: Any | None = None,
    val_y: Any | None = None,
    num_samples: int | None = None,
) -> DataBundle:
    """Wrap arrays as a `DataBundle`.

    Args:
        x: (N, ...) samples, see the module docstring for the shapes.
        y: optional (N, ...) labels or factors.
        val_fraction, seed: the seeded split used when ``val_x`` is not given.
        val_x, val_y: an explicit validation set (then all of ``x`` trains).
        num_samples: keep only the first N of each given array (debugging).

    Raises:
        ValueError: naming the array on a bad rank, dtype, length or value range.
    """
    xt = _as_x(x, "x")
    if xt.ndim not in MODALITIES:
        raise ValueError(
            f"x: expected 2-5 dims (tabular (N, D), audio (N, C, L), image (N, C, H, W), video (N, C, T, H, W)), "
            f"got shape {tuple(xt.shape)}"
        )
    modality = MODALITIES[xt.ndim]
    yt = _as_y(y)
    if num_samples is not None:
        xt, yt = xt[:num_samples], None if yt is None else yt[:num_samples]

    if val_x is None:
        if val_y is not None:
            raise ValueError("val_y: given without val_x")
        tr, va = split_indices(len(xt), val_fraction, seed)
        train_x, val_x_t = xt[tr], xt[va]
        train_y, val_y_t = (None, None) if yt is None else (yt[tr], yt[va])
    else:
        train_x, train_y = xt, yt
        val_x_t, val_y_t = _as_x(val_x, "val_x"), _as_y(val_y)
        if num_samples is not None:
            val_x_t, val_y_t = val_x_t[:num_samples], None if val_y_t is None else val_y_t[:num_samples]
        if val_x_t.shape[1:] != xt.shape[1:]:
            raise ValueError(
                f"val_x: per-sample shape {tuple(val_x_t.shape[1:])} differs from x's {tuple(xt.shape[1:])}"
            )
        if (val_y_t is None) != (yt is None):
            raise ValueError("val_y: give labels for both x and val_x, or for neither")

    parts = [t for t in (train_x, val_x_t) if t.numel()]
    for name, t in (("x", train_x), ("val_x", val_x_t)):
        if t.numel() and not torch.isfinite(t).all():
            raise ValueError(f"{name}: contains NaN or Inf values; clean or impute them before training")
    lo = min((float(t.min()) for t in parts), default=0.0)
    hi = max((float(t.max()) for t in parts), default=0.0)
    if modality in EXPECTED_RANGE:
        elo, ehi = EXPECTED_RANGE[modality]
        if lo < elo or hi > ehi:
            raise ValueError(f"x: {modality} values must lie in [{elo}, {ehi}], got [{lo:.4g}, {hi:.4g}]")
        lo, hi = elo, ehi

    train, val = ArraySource(train_x, train_y), ArraySource(val_x_t, val_y_t)
    shape = tuple(xt.shape[1:])
    info = DataInfo(
        modality=modality,
        shape=shape,
        n_train=len(train),
        n_val=len(val),
        value_range=(lo, hi),
        factor_names=_factor_names(yt),
        description=describe("tensor", len(train), len(val), shape, f"{modality} arrays from Python"),
    )
    return DataBundle(train, val, info)
