"""Arrays passed from Python (source ``tensor``): torch tensors or numpy arrays become in-memory sources.

The modality follows ``x.ndim``: 2 → tabular (N, D); 3 → audio (N, C, L); 4 → image (N, C, H, W);
5 → video (N, C, T, H, W). A grayscale image stack must carry its channel axis: (N, 1, H, W).
uint8 input is divided by 255. Float images/video must lie in [0, 1] and audio in [-1, 1] (no silent rescaling).
Tensors that require grad are detached (the data are constants to the model). Problems (object, string or complex
dtypes, ragged lists, NaN/Inf, labels of another length) are a `ConfigError` (a ValueError) naming the argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.data.base import ArraySource, DataBundle, DataInfo, Modality, describe, split_indices
from vaekit.errors import ConfigError

MODALITIES: dict[int, Modality] = {2: "tabular", 3: "audio", 4: "image", 5: "video"}
EXPECTED_RANGE: dict[str, tuple[float, float]] = {
    "image": (0.0, 1.0),
    "video": (0.0, 1.0),
    "audio": (-1.0, 1.0),
}


NUMERIC = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_tensor(a: Any, name: str) -> Tensor:
    """``a`` (tensor, array or nested lists) as a detached real-valued tensor; ConfigError naming ``name``."""
    if isinstance(a, Tensor):
        t = a.detach()
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as e:  # ragged nested lists
            raise ConfigError(f"{name}: cannot be read as one array ({str(e).splitlines()[0]})") from None
        if arr.dtype.kind in "OUSV":
            kind = {"O": "object", "U": "string", "S": "bytes", "V": "structured"}[arr.dtype.kind]
            raise ConfigError(
                f"{name}: {kind} array (dtype {arr.dtype}); pass numbers: a numeric numpy array or torch tensor"
            )
        try:
            t = torch.as_tensor(arr)
        except (TypeError, RuntimeError) as e:
            raise ConfigError(f"{name}: unsupported dtype {arr.dtype} ({str(e).splitlines()[0]})") from None
    if t.is_complex():
        raise ConfigError(f"{name}: complex dtype {t.dtype}; pass real values (e.g. magnitudes, or real/imag channels)")
    if not (t.is_floating_point() or t.dtype in NUMERIC):
        raise ConfigError(f"{name}: unsupported dtype {t.dtype}")
    if t.ndim == 0:
        raise ConfigError(f"{name}: a single value; expected one entry per sample (N, ...)")
    return t


def _as_x(a: Any, name: str) -> Tensor:
    t = _as_tensor(a, name)
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    return t.to(torch.float32)


def _as_y(a: Any | None, name: str) -> Tensor | None:
    return None if a is None else _as_tensor(a, name)


def _check_finite(t: Tensor, name: str) -> None:
    """ConfigError naming ``name``, how many values are NaN/Inf and the index of the first one."""
    bad = ~torch.isfinite(t)
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in np.unravel_index(int(bad.flatten().to(torch.uint8).argmax()), tuple(t.shape)))
        raise ConfigError(
            f"{name}: contains NaN or Inf: {count} value(s), the first at {name}[{', '.join(map(str, first))}]; "
            "clean or impute them before training"
        )


def _check_labels(y: Tensor | None, x: Tensor, y_name: str, x_name: str) -> None:
    if y is not None and len(y) != len(x):
        raise ConfigError(f"{y_name}: {len(y)} labels for {len(x)} samples in {x_name}; give one per sample")


def _factor_names(y: Tensor | None) -> list[str] | None:
    if y is None:
        return None
    return ["label"] if y.ndim == 1 else [f"y{i}" for i in range(int(np.prod(y.shape[1:])))]


def _value_range(modality: str, named: list[tuple[str, Tensor]]) -> tuple[float, float]:
    """The data's value range: the modality's expected one (checked, naming the array outside it), else the
    arrays' own min and max."""
    lo = min((float(t.min()) for _, t in named if t.numel()), default=0.0)
    hi = max((float(t.max()) for _, t in named if t.numel()), default=0.0)
    if modality in EXPECTED_RANGE:
        elo, ehi = EXPECTED_RANGE[modality]
        for name, t in named:
            if t.numel() and (float(t.min()) < elo or float(t.max()) > ehi):
                raise ConfigError(
                    f"{name}: {modality} values must lie in [{elo}, {ehi}], "
                    f"got [{float(t.min()):.4g}, {float(t.max()):.4g}]"
                )
        lo, hi = elo, ehi
    return lo, hi


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
        ConfigError (a ValueError): naming the array on a bad rank, dtype, length, NaN/Inf or value range.
    """
    xt = _as_x(x, "x")
    if xt.ndim not in MODALITIES:
        raise ConfigError(
            f"x: expected 2-5 dims (tabular (N, D), audio (N, C, L), image (N, C, H, W), video (N, C, T, H, W)), "
            f"got shape {tuple(xt.shape)}"
        )
    modality = MODALITIES[xt.ndim]
    yt = _as_y(y, "y")
    _check_labels(yt, xt, "y", "x")
    if num_samples is not None:
        xt, yt = xt[:num_samples], None if yt is None else yt[:num_samples]
    if len(xt) == 0:
        raise ConfigError("x: no samples (the first axis is empty)")
    _check_finite(xt, "x")

    if val_x is None:
        if val_y is not None:
            raise ConfigError("val_y: given without val_x")
        tr, va = split_indices(len(xt), val_fraction, seed)
        train_x, val_x_t = xt[tr], xt[va]
        train_y, val_y_t = (None, None) if yt is None else (yt[tr], yt[va])
    else:
        train_x, train_y = xt, yt
        val_x_t, val_y_t = _as_x(val_x, "val_x"), _as_y(val_y, "val_y")
        _check_labels(val_y_t, val_x_t, "val_y", "val_x")
        if num_samples is not None:
            val_x_t, val_y_t = val_x_t[:num_samples], None if val_y_t is None else val_y_t[:num_samples]
        if val_x_t.shape[1:] != xt.shape[1:]:
            raise ConfigError(
                f"val_x: per-sample shape {tuple(val_x_t.shape[1:])} differs from x's {tuple(xt.shape[1:])}"
            )
        if (val_y_t is None) != (yt is None):
            raise ConfigError("val_y: give labels for both x and val_x, or for neither")
        _check_finite(val_x_t, "val_x")

    named = [(name, t) for name, t in (("x", xt), ("val_x", val_x_t if val_x is not None else None)) if t is not None]
    lo, hi = _value_range(modality, named)

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
