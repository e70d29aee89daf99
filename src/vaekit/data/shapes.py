"""Procedural dSprites-style shapes: binary 2D sprites rendered from a factor grid, no download.

The grid is dSprites' (Matthey et al. 2017): shape (square, ellipse, heart), scale (6 values in [0.5, 1]),
orientation (40 values in [0, 2π]), posX and posY (32 values in [0, 1] each). Sprites are rendered by testing
pixel centres against implicit equations in rotated coordinates, vectorised over the whole batch with numpy.
A sprite is always fully inside the frame: positions map to centres at least its circumradius from the border.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.base import ArraySource, DataBundle, DataInfo, describe, match_channels, split_three

FACTOR_NAMES = ["shape", "scale", "orientation", "posX", "posY"]
SHAPE_NAMES = ["square", "ellipse", "heart"]
FACTOR_VALUES: list[np.ndarray] = [
    np.arange(3, dtype=np.float32),  # 0 square, 1 ellipse, 2 heart
    np.linspace(0.5, 1.0, 6, dtype=np.float32),
    np.linspace(0.0, 2 * math.pi, 40, dtype=np.float32),
    np.linspace(0.0, 1.0, 32, dtype=np.float32),
    np.linspace(0.0, 1.0, 32, dtype=np.float32),
]
"""The values of each factor, in `FACTOR_NAMES` order (``shape`` holds the index into `SHAPE_NAMES`)."""

HALF_SIZE = 0.14
"""Half the side of the square at scale 1, as a fraction of the frame; every shape fits a circle of
radius ``sqrt(2) * HALF_SIZE * scale`` around its centre."""
_HEART_RADIUS = 1.337  # circumradius of the heart curve (x²+y²−1)³ = x²y³ about its centre (0, 0.118)
_HEART_YC = 0.118
DEFAULT_N = 20000


def render(
    shape: np.ndarray, scale: np.ndarray, angle: np.ndarray, cx: np.ndarray, cy: np.ndarray, size: int
) -> np.ndarray:
    """Render binary sprites.

    Args:
        shape: (N,) shape index (0 square, 1 ellipse, 2 heart).
        scale: (N,) scale in (0, 1].
        angle: (N,) orientation in radians.
        cx, cy: (N,) centres as fractions of the frame (x: columns, y: rows, growing downwards).
        size: frame side in pixels.

    Returns:
        (N, size, size) bool.
    """
    n = len(shape)
    out = np.zeros((n, size, size), dtype=bool)
    u = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres
    for start in range(0, n, 1024):  # chunks keep the temporaries small
        sl = slice(start, start + 1024)
        s = (HALF_SIZE * scale[sl]).astype(np.float32)[:, None, None]  # (B, 1, 1)
        cos = np.cos(angle[sl]).astype(np.float32)[:, None, None]
        sin = np.sin(angle[sl]).astype(np.float32)[:, None, None]
        dx = (u[None, None, :] - cx[sl, None, None]) / s  # (B, 1, S)
        dy = (u[None, :, None] - cy[sl, None, None]) / s  # (B, S, 1)
        xr = cos * dx + sin * dy  # (B, S, S) coordinates in the sprite's frame, unit = half side
        yr = cos * dy - sin * dx
        kind = shape[sl]
        for k, inside in enumerate((_square, _ellipse, _heart)):
            m = kind == k
            if m.any():
                out[start + np.flatnonzero(m)] = inside(xr[m], yr[m])
    return out


def _square(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(x), np.abs(y)) <= 1.0


def _ellipse(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a = math.sqrt(2.0)  # semi-axes √2 and √2/2: the circumradius matches the square's
    return (x / a) ** 2 + (y / (a / 2)) ** 2 <= 1.0


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = math.sqrt(2.0) / _HEART_RADIUS
    hx = x / k
    hy = -y / k + _HEART_YC  # image rows grow downwards; the heart points down at orientation 0
    r = hx * hx + hy * hy - 1.0
    return r * r * r - hx * hx * hy * hy * hy <= 0.0


def positions(pos: np.ndarray, size: int) -> np.ndarray:
    """Map positions in [0, 1] to centres (fractions of the frame) that keep the largest sprite inside the
    frame with a pixel to spare; one margin for all scales, so a position means the same place for every sprite."""
    margin = math.sqrt(2.0) * HALF_SIZE * float(FACTOR_VALUES[1].max()) + 1.0 / size
    return (margin + pos * (1.0 - 2.0 * margin)).astype(np.float32)


def sample_factors(n: int, seed: int = 0) -> np.ndarray:
    """(n, 5) float32 factor values drawn uniformly from the grid, in `FACTOR_NAMES` order."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(v), size=n) for v in FACTOR_VALUES]
    return np.stack([v[i] for v, i in zip(FACTOR_VALUES, idx, strict=True)], axis=1)


def render_factors(factors: np.ndarray, size: int = 64) -> Tensor:
    """Render (n, 5) factor values as (n, 1, size, size) float32 in {0, 1} (white shape on black)."""
    shape, scale, angle, px, py = factors.T
    img = render(shape.astype(np.int64), scale, angle, positions(px, size), positions(py, size), size)
    return torch.from_numpy(img).unsqueeze(1).to(torch.float32)


def make_shapes(n: int, size: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sample ``n`` sprites uniformly from the factor grid and render them.

    Returns:
        x: (n, 1, size, size) float32 in {0, 1} (white shape on black).
        factors: (n, 5) float32 factor values in `FACTOR_NAMES` order.
    """
    f = sample_factors(n, seed)
    return render_factors(f, size), torch.from_numpy(f)


def build_shapes(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``shapes`` source: ``data.num_samples`` sprites (default 20000) split by ``data.split`` (or
    ``data.val_fraction``)."""
    n = cfg.num_samples or DEFAULT_N
    size = cfg.image_size or 64
    f = sample_factors(n, seed)
    tr, va, te = split_three(n, cfg.split, cfg.val_fraction, seed)
    # render each split directly (same samples as make_shapes(n)[idx], without copying 20k images)
    x_tr, x_va, x_te = (match_channels(render_factors(f[i.numpy()], size), cfg.channels) for i in (tr, va, te))
    shape = tuple(x_tr.shape[1:])
    info = DataInfo(
        modality="image",
        shape=shape,
        n_train=len(tr),
        n_val=len(va),
        n_test=len(te),
        value_range=(0.0, 1.0),
        factor_names=list(FACTOR_NAMES),
        description=describe("shapes", len(tr), len(va), shape, "procedural dSprites-style", len(te)),
    )
    ft = torch.from_numpy(f)
    test = ArraySource(x_te, ft[te]) if len(te) else None
    return DataBundle(ArraySource(x_tr, ft[tr]), ArraySource(x_va, ft[va]), info, test)
