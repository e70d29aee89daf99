"""Video: procedural moving shapes (source ``moving_shapes``) and video files (source ``video_folder``).

`make_moving_shapes` moves one dSprites-style sprite (see `shapes`) with constant velocity over T frames,
bouncing off the walls. `read_video_clips` decodes a .mp4/.avi/.mkv/.webm file into non-overlapping clips with
PyAV; `build_video_folder` reads every file under ``data.path`` that way and holds the clips in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.base import (
    ArraySource,
    DataBundle,
    DataError,
    DataInfo,
    describe,
    match_channels,
    split_indices,
)
from vaekit.data.images import resize_and_crop, to_tensor
from vaekit.data.shapes import FACTOR_NAMES, FACTOR_VALUES, positions, render

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm"}
MOVING_FACTOR_NAMES = [*FACTOR_NAMES, "velX", "velY"]
DEFAULT_N = 10000
DEFAULT_SIZE = 32


def bounce(p: np.ndarray) -> np.ndarray:
    """Fold unbounded positions back into [0, 1] (reflection at both walls)."""
    q = np.mod(p, 2.0)
    return np.where(q > 1.0, 2.0 - q, q)


def make_moving_shapes(
    n: int, frames: int = 8, size: int = DEFAULT_SIZE, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Clips of one sprite moving with constant velocity, bouncing off the frame's edges.

    Shape, scale and orientation are drawn from the dSprites grid; the start position uniformly in [0, 1]²
    (the same position units as `shapes`), the velocity with a uniform direction and a speed of 0.05-0.2
    position units per frame.

    Returns:
        x: (n, 1, frames, size, size) float32 in {0, 1}.
        y: (n, 7) float32: shape, scale, orientation, posX, posY (first frame), velX, velY.
    """
    rng = np.random.default_rng(seed)
    shape, scale, angle = (v[rng.integers(0, len(v), size=n)] for v in FACTOR_VALUES[:3])
    p0 = rng.uniform(0.0, 1.0, size=(n, 2)).astype(np.float32)
    heading = rng.uniform(0.0, 2 * np.pi, size=n)
    speed = rng.uniform(0.05, 0.2, size=n)
    vel = np.stack([np.cos(heading), np.sin(heading)], axis=1).astype(np.float32) * speed[:, None]  # (n, 2)
    t = np.arange(frames, dtype=np.float32)
    pos = bounce(p0[:, None, :] + vel[:, None, :] * t[None, :, None]).reshape(n * frames, 2)  # (n·T, 2)
    img = render(
        np.repeat(shape, frames).astype(np.int64),
        np.repeat(scale, frames),
        np.repeat(angle, frames),
        positions(pos[:, 0], size),
        positions(pos[:, 1], size),
        size,
    )
    x = torch.from_numpy(img).view(n, 1, frames, size, size).to(torch.float32)  # (n, 1, T, S, S)
    y = np.concatenate([np.stack([shape, scale, angle], axis=1), p0, vel], axis=1).astype(np.float32)
    return x, torch.from_numpy(y)


def build_moving_shapes(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``moving_shapes`` source: ``data.num_samples`` clips (default 10000) of ``data.frames`` frames."""
    n = cfg.num_samples or DEFAULT_N
    size = cfg.image_size or DEFAULT_SIZE
    x, y = make_moving_shapes(n, frames=cfg.frames, size=size, seed=seed)
    x = match_channels(x, cfg.channels)
    note = "procedural bouncing sprites"
    return _clip_bundle("moving_shapes", x, y, cfg, seed, note, factor_names=list(MOVING_FACTOR_NAMES))


def _clip_bundle(
    name: str,
    x: Tensor,
    y: Tensor | None,
    cfg: DataConfig,
    seed: int,
    note: str,
    factor_names: list[str] | None = None,
    skipped: int = 0,
) -> DataBundle:
    """In-memory clips ``x (N, C, T, H, W)`` (and factors ``y``) split by ``data.val_fraction``."""
    tr, va = split_indices(len(x), cfg.val_fraction, seed)
    shape = tuple(x.shape[1:])
    info = DataInfo(
        modality="video",
        shape=shape,
        n_train=len(tr),
        n_val=len(va),
        value_range=(0.0, 1.0),
        factor_names=factor_names,
        skipped=skipped,
        description=describe(name, len(tr), len(va), shape, note),
    )
    y_tr, y_va = (None, None) if y is None else (y[tr], y[va])
    return DataBundle(ArraySource(x[tr], y_tr), ArraySource(x[va], y_va), info)


def read_video_clips(
    path: str | Path,
    frames: int,
    size: int | None = None,
    *,
    channels: int = 3,
    max_clips: int | None = None,
) -> Tensor:
    """Decode a video file into non-overlapping clips of ``frames`` consecutive frames.

    Args:
        path: a video file PyAV/FFmpeg can decode (.mp4, .avi, .mkv, .webm, ...); its first video stream is read.
        frames: frames per clip; trailing frames that do not fill a clip are dropped.
        size: resize the short side to ``size`` and centre-crop a square (None: native frame size).
        channels: 3 (RGB) or 1 (grayscale).
        max_clips: stop decoding after this many clips.

    Returns:
        (K, C, frames, H, W) float32 in [0, 1]; K may be 0 when the video is shorter than one clip.

    Raises:
        DataError: naming ``path`` when it cannot be opened or decoded or holds no video frames.
    """
    import av  # PyAV: only needed when video files are read

    path = Path(path)
    clips: list[Tensor] = []
    buf: list[Tensor] = []
    decoded = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            for frame in container.decode(container.streams.video[0]):
                img = frame.to_image().convert("L" if channels == 1 else "RGB")
                if size is not None:
                    img = resize_and_crop(img, size)
                buf.append(to_tensor(img))  # (C, H, W)
                decoded += 1
                if len(buf) == frames:
                    clips.append(torch.stack(buf, dim=1))  # (C, T, H, W)
                    buf = []
                    if max_clips is not None and len(clips) >= max_clips:
                        break
    except (av.FFmpegError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    if decoded == 0:
        raise DataError(f"{path}: no video frames decoded")
    if not clips:
        h, w = buf[0].shape[-2:]
        return torch.zeros(0, channels, frames, h, w)
    return torch.stack(clips)  # (K, C, T, H, W)


def build_video_folder(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``video_folder`` source: every video file under ``data.path`` (recursive), cut into non-overlapping
    clips of ``data.frames`` frames at ``data.image_size`` (default 64), held in memory; seeded clip-level split."""
    if not cfg.path:
        raise ValueError("data.path: required for data.source=video_folder (a directory of .mp4/.avi/.mkv/.webm)")
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"{root}: data.path is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{root}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) found")
    size = cfg.image_size or 64
    channels = cfg.channels or 3
    clips, errors = [], []
    for path in files:
        try:
            clips.append(read_video_clips(path, cfg.frames, size, channels=channels))
        except DataError as err:
            if cfg.on_error == "raise":
                raise DataError(f"{err} (set data.on_error=skip to skip unreadable files)") from None
            errors.append(str(err))
    x = torch.cat([c for c in clips if len(c)]) if any(len(c) for c in clips) else None
    if x is None:
        raise DataError(f"{root}: no clip of {cfg.frames} frames could be read (data.frames too large?)")
    if cfg.num_samples:
        x = x[: cfg.num_samples]
    note = f"{len(files) - len(errors)} files in {root}"
    return _clip_bundle("video_folder", x, None, cfg, seed, note, skipped=len(errors))
