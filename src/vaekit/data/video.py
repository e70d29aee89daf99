"""Video: procedural moving shapes (source ``moving_shapes``) and video files (source ``video_folder``).

`make_moving_shapes` moves one dSprites-style sprite (see `shapes`) with constant velocity over T frames,
bouncing off the walls. `read_video_clips` decodes a .mp4/.avi/.mkv/.webm file into non-overlapping clips with
PyAV.

``video_folder`` streams: at build only the headers are read (frame counts; one folder of JPEG/PNG frames counts
as one video, its frames in natural name order). Each video of n frames gives ``n // (frames * frame_stride)``
clip slots (at least one when it holds ``(frames - 1) * frame_stride + 1`` frames); a sample is one slot and
``__getitem__`` decodes only its ``data.frames`` frames, ``data.frame_stride`` apart (PyAV seeks to the keyframe
before them). Training clips start at a random frame within their slot (drawn from the per-sample generator, so
resume is exact); validation and test clips start at the slot's first frame. The train/val/test split is over
slots, seeded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
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
    FileSource,
    describe,
    match_channels,
    split_three,
)
from vaekit.data.common import data_dir, probe_all
from vaekit.data.images import IMAGE_EXTENSIONS, load_image, resize_and_crop, to_tensor
from vaekit.data.shapes import FACTOR_NAMES, FACTOR_VALUES, positions, render

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm", ".mov"}
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
    """In-memory clips ``x (N, C, T, H, W)`` (and factors ``y``) split by ``data.split`` / ``data.val_fraction``."""
    tr, va, te = split_three(len(x), cfg.split, cfg.val_fraction, seed)
    shape = tuple(x.shape[1:])
    info = DataInfo(
        modality="video",
        shape=shape,
        n_train=len(tr),
        n_val=len(va),
        n_test=len(te),
        value_range=(0.0, 1.0),
        factor_names=factor_names,
        skipped=skipped,
        description=describe(name, len(tr), len(va), shape, note, len(te)),
    )

    def part(i: Tensor) -> ArraySource:
        return ArraySource(x[i], None if y is None else y[i])

    return DataBundle(part(tr), part(va), info, part(te) if len(te) else None)


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


@dataclass(frozen=True)
class VideoItem:
    """One video file or frame folder: its path, frame count and (frame folders) frame files."""

    path: Path
    frames: int
    fps: float | None = None
    frame_files: tuple[Path, ...] | None = None
    seekable: bool = True
    """False: timestamps do not give presentation order (AVI), frames are counted from the start instead."""


def _natural_key(p: Path) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def probe_video(path: Path) -> VideoItem:
    """Open ``path`` and read its frame count (header, else duration × rate, else counting packets).

    Raises:
        DataError: naming ``path`` when it cannot be opened or holds no video stream.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            seekable = "avi" not in container.format.name.split(",")
            n = int(stream.frames or 0)
            if n <= 0 and fps and stream.duration and stream.time_base:
                n = int(stream.duration * stream.time_base * fps)
            if n <= 0:
                n = sum(1 for pkt in container.demux(stream) if pkt.size)
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot open video ({type(e).__name__}: {e})") from e
    if n <= 0:
        raise DataError(f"{path}: no video frames")
    return VideoItem(path, n, fps, seekable=seekable)


def _frame_image(frame, channels: int, size: int):  # noqa: ANN001, ANN202 - av.VideoFrame → PIL image
    img = frame.to_image().convert("L" if channels == 1 else "RGB")
    return resize_and_crop(img, size)


def decode_frames(path: str | Path, indices: list[int], size: int, channels: int = 3, seek: bool = True) -> Tensor:
    """Decode the frames at ``indices`` (ascending) of a video file.

    With ``seek``, seeks to the keyframe before the first index and decodes forward, locating frames by their
    timestamps; it falls back to counting frames from the start (as without ``seek``) when the file has no
    timestamps, they are not increasing, or the seek overshoots. An index the decoder
    does not produce (past the end when the header over-counts, or a timestamp gap) repeats the previous frame.

    Returns:
        (C, len(indices), size, size) float32 in [0, 1].

    Raises:
        DataError: naming ``path`` when it cannot be decoded.
    """
    import av

    path = Path(path)
    wanted = sorted(set(indices))
    try:
        got = _decode_by_pts(path, wanted, size, channels) if seek else None
        if got is None:
            got = _decode_sequential(path, wanted, size, channels)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    if not got:
        raise DataError(f"{path}: no frame decoded at {wanted[0]}..{wanted[-1]}")
    frames, prev = [], got[min(got)]
    for i in indices:  # a frame the decoder did not produce (over-counted header, timestamp gap): the previous
        prev = got.get(i, prev)
        frames.append(prev)
    return torch.stack(frames, dim=1)  # (C, T, H, W)


def _decode_by_pts(path: Path, wanted: list[int], size: int, channels: int) -> dict[int, Tensor] | None:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate or not stream.time_base:
            return None
        fps, tb = float(rate), float(stream.time_base)
        t0 = stream.start_time or 0
        if wanted[0] > 0:
            container.seek(t0 + int(wanted[0] / fps / tb), stream=stream, backward=True, any_frame=False)
        want, got = set(wanted), {}
        prev = None
        for frame in container.decode(stream):
            if frame.pts is None or (prev is not None and frame.pts <= prev):
                return None  # no timestamps, or not in presentation order
            idx = round((frame.pts - t0) * tb * fps)
            if prev is None and idx > wanted[0]:
                return None  # the seek landed after the first wanted frame
            prev = frame.pts
            if idx in want and idx not in got:
                got[idx] = to_tensor(_frame_image(frame, channels, size))
            if idx >= wanted[-1]:
                break
        return got


def _decode_sequential(path: Path, wanted: list[int], size: int, channels: int) -> dict[int, Tensor]:
    import av

    want, got = set(wanted), {}
    with av.open(str(path)) as container:
        for idx, frame in enumerate(container.decode(container.streams.video[0])):
            if idx in want:
                got[idx] = to_tensor(_frame_image(frame, channels, size))
            if idx >= wanted[-1]:
                break
    return got


class VideoClipSource(FileSource):
    """Streaming clips; ``__getitem__(i) -> {"x": (C, T, size, size)}``, decoded on demand."""

    def __init__(
        self,
        videos: list[VideoItem],
        slots: list[tuple[int, int]],
        frames: int,
        stride: int,
        size: int,
        channels: int,
        *,
        random_start: bool,
        seed: int = 0,
        skip_errors: bool = False,
    ) -> None:
        super().__init__(seed=seed, augment=random_start)
        self.videos = videos
        self.slots = slots
        """(video index, first frame of the slot) per sample."""
        self.frames, self.stride, self.size, self.channels = frames, stride, size, channels
        self.skip_errors = skip_errors
        self.skipped: set[Path] = set()
        """Videos found unreadable while streaming (``data.on_error=skip``), in this process."""

    def __len__(self) -> int:
        return len(self.slots)

    def indices(self, i: int) -> tuple[VideoItem, list[int]]:
        """The video and frame indices of sample ``i`` (random start within the slot when training)."""
        v, base = self.slots[i]
        video = self.videos[v]
        span = (self.frames - 1) * self.stride + 1
        last = min(base + self.frames * self.stride - 1, video.frames - span)
        start = base
        if self.augment and last > base:
            start = int(torch.randint(base, last + 1, (1,), generator=self.generator(i)))
        return video, [start + k * self.stride for k in range(self.frames)]

    def load(self, video: VideoItem, idx: list[int]) -> Tensor:
        if video.frame_files is None:
            return decode_frames(video.path, idx, self.size, self.channels, seek=video.seekable)
        imgs = [to_tensor(resize_and_crop(load_image(video.frame_files[k], self.channels), self.size)) for k in idx]
        return torch.stack(imgs, dim=1)  # (C, T, H, W)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        for k in range(len(self.slots)):
            video, idx = self.indices((i + k) % len(self.slots))
            try:
                return {"x": self.load(video, idx)}
            except DataError as err:
                if not self.skip_errors:
                    raise
                if video.path not in self.skipped:  # once per file and process (each DataLoader worker warns)
                    self.skipped.add(video.path)
                    logger.warning("warning: skipping unreadable clip of %s (data.on_error=skip; the next readable "
                                   "clip takes its place): %s", video.path, err)
        raise DataError(f"{self.videos[0].path.parent}: no readable clip left")


def scan_videos(root: Path) -> tuple[list[Path], list[tuple[Path, tuple[Path, ...]]]]:
    """Video files and frame folders (directories holding image files) under ``root``, sorted."""
    files, folders = [], []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            files.append(p)
    for d in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        imgs = sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key)
        if imgs:
            folders.append((d, tuple(imgs)))
    return files, folders


def clip_slots(videos: list[VideoItem], frames: int, stride: int) -> tuple[list[tuple[int, int]], list[str]]:
    """(video index, first frame) of every clip slot, and the names of videos too short for one clip."""
    span = (frames - 1) * stride + 1
    window = frames * stride
    slots: list[tuple[int, int]] = []
    too_short = []
    for v, video in enumerate(videos):
        if video.frames < span:
            too_short.append(video.path.name)
            continue
        slots += [(v, k * window) for k in range(max(1, video.frames // window))]
    return slots, too_short


def build_video_folder(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``video_folder`` source: video files and frame folders under ``data.path`` (recursive), streamed as
    clips of ``data.frames`` frames ``data.frame_stride`` apart at ``data.image_size`` (default 64)."""
    root = data_dir(cfg.path, "video_folder", "a directory of .mp4/.avi/.mkv/.webm/.mov files or of frame folders")
    files, folders = scan_videos(root)
    if not files and not folders:
        raise DataError(f"{root}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) or frame folders found")
    size = cfg.image_size or 64
    channels = cfg.channels or 3
    # reading and validating: every video's header (frame folders count their files)
    videos, errors = probe_all(files, probe_video, cfg.on_error, "video(s)")
    videos += [VideoItem(d, len(imgs), None, imgs) for d, imgs in folders]
    slots, too_short = clip_slots(videos, cfg.frames, cfg.frame_stride)
    if not slots:
        span = (cfg.frames - 1) * cfg.frame_stride + 1
        raise DataError(
            f"{root}: no video has {span} frames (data.frames={cfg.frames} × data.frame_stride={cfg.frame_stride})"
        )
    slots = slots[: cfg.num_samples] if cfg.num_samples else slots
    # assembling: a seeded split over clip slots
    tr, va, te = split_three(len(slots), cfg.split, cfg.val_fraction, seed)

    def source(idx: Tensor, train: bool) -> VideoClipSource:
        return VideoClipSource(videos, [slots[i] for i in idx.tolist()], cfg.frames, cfg.frame_stride, size,
                               channels, random_start=train, seed=seed, skip_errors=cfg.on_error == "skip")

    train, val = source(tr, True), source(va, False)
    test = source(te, False) if len(te) else None
    meta = {
        "frames": cfg.frames,
        "frame_stride": cfg.frame_stride,
        "size": size,
        "channels": channels,
        "videos": len(videos),
        "frame_folders": len(folders),
        "fps": sorted({round(v.fps, 3) for v in videos if v.fps}),
        "clips": len(slots),
        "too_short": too_short,
    }
    shape = (channels, cfg.frames, size, size)
    note = f"{len(videos)} videos in {root}, streaming" + (f", {len(errors)} skipped" if errors else "")
    info = DataInfo(
        modality="video",
        shape=shape,
        n_train=len(tr),
        n_val=len(va),
        n_test=len(te),
        value_range=(0.0, 1.0),
        skipped=len(errors),
        description=describe("video_folder", len(tr), len(va), shape, note, len(te)),
        meta=meta,
    )
    return DataBundle(train, val, info, test)
