"""Tiled / chunked encode and decode: inputs larger than the trained size or than memory, for any model with
``encode(x) -> (mean, logvar)``, ``decode(z) -> (recon, ...)`` and ``latent_shape_for(shape)``.

The input is cut into overlapping windows along the tiled axes (height and width; for video also time): windows
of ``size`` with ``overlap``, the last one flush with the end, so every element is covered. Each window is encoded
(decoded) on its own and the outputs are blended: each window's output is weighted by a separable ramp that rises
linearly over ``overlap`` (in output units) from each of its edges, and the weighted sum is divided by the summed
weights. At the input's own borders a single window covers the edge, so nothing is lost there.

The factor between input and latent along an axis is read from ``model.latent_shape_for``: ``n = f * m`` (plain)
or ``n = f * (m - 1) + 1`` (causal video models, whose first frame is its own latent). Window starts are multiples
of ``f``. With a causal model each temporal chunk starts with a first-frame latent; the blend averages it with the
previous chunk's latent for the same frame — an approximation (exact only where no chunk boundary falls).

Cost: each window sees zero padding where the full input had neighbours, so outputs near window edges differ from
the untiled ones; models with global normalisation (GroupNorm over the whole image) differ everywhere by the
changed statistics. `seam_metric` measures the error near window borders against the error inside.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vaekit.errors import ConfigError


def axis_factor(n: int, m: int) -> tuple[int, bool]:
    """(factor, causal) between an input length ``n`` and its latent length ``m``."""
    if m > 0 and n % m == 0:
        return n // m, False
    if m > 1 and (n - 1) % (m - 1) == 0:
        return (n - 1) // (m - 1), True
    raise ConfigError(f"tiling: input length {n} maps to latent length {m}, not a whole down-sampling factor")


def starts(length: int, size: int, overlap: int, step: int = 1) -> list[int]:
    """Window starts along an axis: ``size - overlap`` apart (rounded down to ``step``), the last flush with the end."""
    if size >= length:
        return [0]
    stride = max(step, (size - overlap) // step * step)
    out = list(range(0, length - size, stride))
    last = (length - size) // step * step
    return out + ([last] if not out or out[-1] != last else [])


def ramp(length: int, overlap: int) -> Tensor:
    """A 1-D blending weight: linear over ``overlap`` elements from each edge, 1 in between (never 0)."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    if overlap <= 0:
        return torch.ones(length)
    return torch.minimum(torch.ones(length), torch.minimum(i, length - i + 0.0) / overlap)


@dataclass(frozen=True)
class Axis:
    """How one axis is tiled: windows of ``size`` with ``overlap`` starting on multiples of ``step`` (input units);
    the output has length ``total``, a window starting at ``p`` lands at ``out_start(p)``, and the blend ramps
    over ``out_overlap`` output elements."""

    dim: int
    size: int
    overlap: int
    step: int
    total: int
    out_start: Callable[[int], int]
    out_overlap: int


def blend(fn: Callable[[Tensor], list[Tensor]], x: Tensor, axes: list[Axis]) -> list[Tensor]:
    """Run ``fn`` on the windows of ``x`` along ``axes`` and blend each of its outputs (tiled along the same dims)."""
    grids = [starts(x.shape[a.dim], a.size, a.overlap, a.step) for a in axes]
    acc: list[Tensor] = []
    wsum: Tensor | None = None
    for pos in itertools.product(*grids):
        window = x
        for a, p in zip(axes, pos, strict=True):
            window = window.narrow(a.dim, p, min(a.size, x.shape[a.dim] - p))
        outs = fn(window)
        ndim = outs[0].ndim
        if not acc:
            for o in outs:
                shape = list(o.shape)
                for a in axes:
                    shape[a.dim] = a.total
                acc.append(o.new_zeros(shape))
            wsum = outs[0].new_zeros([a_total(axes, d) for d in range(ndim)])
        w = outs[0].new_ones([1] * ndim)
        index = [slice(None)] * ndim
        for a, p in zip(axes, pos, strict=True):
            n = outs[0].shape[a.dim]
            view = [1] * ndim
            view[a.dim] = n
            w = w * ramp(n, a.out_overlap).to(w).view(view)
            index[a.dim] = slice(a.out_start(p), a.out_start(p) + n)
        for buf, o in zip(acc, outs, strict=True):
            buf[tuple(index)] += o * w
        wsum[tuple(index)] += w  # type: ignore[index]
    return [buf / wsum for buf in acc]


def a_total(axes: list[Axis], d: int) -> int:
    """The output length along dim ``d`` when tiled, else 1 (broadcast)."""
    return next((a.total for a in axes if a.dim == d), 1)


def _factors(model: torch.nn.Module, x_shape: tuple[int, ...], dims: list[int]) -> list[tuple[int, bool]]:
    latent = model.latent_shape_for(tuple(x_shape[1:]))  # type: ignore[operator]
    if len(latent) != len(x_shape) - 1:
        raise ConfigError("tiling: needs a spatial latent (model.latent=spatial); a vector latent has no tiles")
    return [axis_factor(x_shape[d], latent[d - 1]) for d in dims]


def _dims(x: Tensor) -> list[int]:
    """The tiled dims: (H, W) of images, (T, H, W) of video."""
    if x.ndim == 4:
        return [2, 3]
    if x.ndim == 5:
        return [2, 3, 4]
    raise ConfigError(f"tiling: images (N, C, H, W) or video (N, C, T, H, W) only (got {x.ndim} dims)")


def tiled_encode(model: torch.nn.Module, x: Tensor, tile: int, overlap: int, frames: int | None = None,
                 frame_overlap: int = 0) -> tuple[Tensor, Tensor]:
    """``model.encode`` of ``x`` in overlapping windows of ``tile`` pixels (and ``frames`` frames), blended.

    Returns:
        (mean, logvar) of the same shapes as ``model.encode(x)``.
    """
    dims = _dims(x)
    sizes = {d: tile for d in dims[-2:]} | ({dims[0]: frames or x.shape[2]} if x.ndim == 5 else {})
    overlaps = {d: overlap for d in dims[-2:]} | ({dims[0]: frame_overlap} if x.ndim == 5 else {})
    axes = []
    for d, (f, causal) in zip(dims, _factors(model, tuple(x.shape), dims), strict=True):
        total = (x.shape[d] - 1) // f + 1 if causal else x.shape[d] // f
        axes.append(Axis(d, sizes[d], overlaps[d], f, total, lambda p, f=f: p // f, overlaps[d] // f))
    mean, logvar = blend(lambda w: list(model.encode(w)), x, axes)  # type: ignore[operator]
    return mean, logvar


def tiled_decode(model: torch.nn.Module, z: Tensor, x_shape: tuple[int, ...], tile: int, overlap: int,
                 frames: int | None = None, frame_overlap: int = 0) -> Tensor:
    """``model.decode`` of ``z`` in overlapping windows of ``tile // f`` latent positions, blended; ``x_shape``
    (N, C, ...) is the shape of the input ``z`` came from, ``tile``/``overlap``/``frames`` in input units."""
    dims = _dims(z)
    axes = []
    for d, (f, causal) in zip(dims, _factors(model, tuple(x_shape), dims), strict=True):
        size, ov = (tile, overlap) if d in dims[-2:] else (frames or x_shape[2], frame_overlap)
        lat_size = (size - 1) // f + 1 if causal else max(1, size // f)
        axes.append(Axis(d, lat_size, ov // f, 1, x_shape[d], lambda p, f=f: p * f, ov))
    recon = blend(lambda w: [model.decode(w)[0]], z, axes)[0]  # type: ignore[operator]
    return recon


def seam_mask(shape: tuple[int, ...], axes: list[tuple[int, int, int]], band: int | None = None) -> Tensor:
    """True for the elements near an inner window border along any of ``axes`` = ``[(dim, size, overlap), ...]``:
    within ``band`` (default ``overlap // 2`` of that axis, at least 1) of a later window's start or an earlier
    window's end."""
    near = torch.zeros(shape, dtype=torch.bool)
    for d, size, overlap in axes:
        n, width = shape[d], max(1, overlap // 2) if band is None else band
        line = torch.zeros(n, dtype=torch.bool)
        grid = starts(n, size, overlap)
        for p in [*grid[1:], *(q + size for q in grid[:-1])]:
            line[max(0, p - width) : p + width] = True
        view = [1] * len(shape)
        view[d] = n
        near |= line.view(view).expand(shape)
    return near


def seam_metric(err: Tensor, axes: list[tuple[int, int, int]], band: int | None = None) -> dict[str, float]:
    """Mean squared error near the window borders vs inside the windows.

    Args:
        err: the per-element squared error (N, C, ...) of the tiled reconstruction.
        axes: ``[(dim, size, overlap), ...]`` as used for tiling (see `seam_mask`).
        band: see `seam_mask`.

    Returns:
        ``mse_near_seams``, ``mse_inside``, their ``ratio`` and ``seam_fraction`` (the share of elements near).
    """
    near = seam_mask(tuple(err.shape), axes, band)
    near_mse = float(err[near].mean()) if near.any() else float("nan")
    inside = float(err[~near].mean()) if (~near).any() else float("nan")
    return {"mse_near_seams": near_mse, "mse_inside": inside, "ratio": near_mse / inside if inside else float("nan"),
            "seam_fraction": float(near.float().mean())}
