"""Audio folders (source ``audio_folder``): WAV/FLAC/OGG/AIFF files read with soundfile, streamed from disk.

At build every file's header is read (``soundfile.info``: rate, channels, length); nothing is decoded. Each sample
is one file: ``__getitem__`` reads only the window it needs, mixes down to mono (``data.channels: 1``, the
default) or keeps two channels, resamples to ``data.sample_rate`` (soxr; scipy's polyphase filter when soxr is
missing) and returns a segment of ``round(data.segment * sample_rate)`` samples: a random window for training
(drawn from the per-sample generator, so resume is exact), the centre window for validation and test. Files
shorter than a segment are zero-padded at the end. Values stay in [-1, 1].

Labels (``data.labels``): ``folder`` = the parent folder's name, ``filename_prefix`` = the file name up to its
first ``_`` or ``-`` (``7_jackson_32.wav`` → ``7``); ``y`` is the index into the sorted class names, which go to
``info.meta["classes"]``.

Errors: at build, a file whose header cannot be read, a WAV shorter than its header declares (truncated), or a
float file holding NaN/Inf samples raises `DataError` naming it (``data.on_error: skip`` leaves it out and counts
it). A file that fails while decoding (or yields non-finite samples) raises naming it, or with ``skip`` is replaced
by the next readable file. Files with more than two channels are mixed down (or cut to two) with one warning that
names ``data.channels``.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.base import DataBundle, DataError, DataInfo, FileSource, describe, split_three
from vaekit.data.common import data_dir, probe_all
from vaekit.errors import ConfigError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff"}


def _soundfile():  # noqa: ANN202 - the module
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ConfigError("data.source=audio_folder: needs the soundfile package (pip install soundfile)") from e
    return soundfile


@dataclass(frozen=True)
class AudioFile:
    """One file's header facts."""

    path: Path
    sample_rate: int
    channels: int
    frames: int


def scan_audio(root: str | Path) -> list[Path]:
    """All audio files under ``root`` (recursive, extension case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data.path is not a directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def probe_audio(path: Path) -> AudioFile:
    """Read ``path``'s header; DataError naming it when it is not a readable sound file, is a WAV shorter than
    its header says (truncated), or is a float file holding NaN/Inf samples (float files are scanned in blocks)."""
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError, TypeError) as e:  # LibsndfileError is a RuntimeError
        raise DataError(f"{path}: cannot read audio header ({e})") from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise DataError(f"{path}: no audio frames")
    declared = wav_declared_frames(path) if path.suffix.lower() == ".wav" else None
    if declared is not None and info.frames < declared:
        raise DataError(f"{path}: truncated: the header declares {declared} frames, the file holds {info.frames}")
    if info.subtype in ("FLOAT", "DOUBLE"):  # integer PCM cannot hold NaN/Inf
        _check_finite_samples(path)
    return AudioFile(path, int(info.samplerate), int(info.channels), int(info.frames))


def wav_declared_frames(path: Path) -> int | None:
    """The frame count a RIFF/WAVE header declares (data chunk size / block align); None when it does not say
    (a streaming writer's 0 or 0xFFFFFFFF size, RF64, or no fmt/data chunk in the first 64 KiB)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)  # the fmt and data chunk headers are almost always here
            if b"data" not in head:
                head += fh.read(65536 - len(head))
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, align = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if cid == b"fmt " and pos + 22 <= len(head):
            align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        elif cid == b"data":
            if not align or size in (0, 0xFFFFFFFF):
                return None
            return size // align
        pos += 8 + size + (size & 1)
    return None


def _check_finite_samples(path: Path, block: int = 1 << 16) -> None:
    sf = _soundfile()
    try:
        for k, chunk in enumerate(sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True)):
            if not np.isfinite(chunk).all():
                frame = k * block + int(np.argwhere(~np.isfinite(chunk))[0][0])
                raise DataError(f"{path}: NaN or Inf samples (the first at frame {frame}); non-finite audio is refused")
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot decode audio ({e})") from e


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``wave (frames, C)`` float32 from ``rate_in`` to ``rate_out`` Hz (soxr HQ, else scipy)."""
    if rate_in == rate_out:
        return wave
    try:
        import soxr

        return soxr.resample(wave, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)
    except ImportError:
        from scipy.signal import resample_poly

        g = math.gcd(rate_in, rate_out)
        return resample_poly(wave, rate_out // g, rate_in // g, axis=0).astype(np.float32, copy=False)


def read_segment(
    f: AudioFile, rate: int, length: int, start: int, channels: int
) -> Tensor:
    """Read ``length`` samples at ``rate`` Hz starting at output sample ``start`` of file ``f``.

    Only the needed window of the file is decoded (plus a margin for the resampling filter).

    Returns:
        (channels, length) float32 in [-1, 1], zero-padded at the end when the file is shorter.
    """
    sf = _soundfile()
    margin = 0 if f.sample_rate == rate else 64
    first = max(0, math.floor(start * f.sample_rate / rate) - margin)
    stop = min(f.frames, math.ceil((start + length) * f.sample_rate / rate) + margin)
    try:
        data, _ = sf.read(str(f.path), start=first, stop=max(stop, first + 1), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise DataError(f"{f.path}: cannot decode audio ({e})") from e
    data = resample(data, f.sample_rate, rate)  # (frames', C)
    offset = round((start * f.sample_rate / rate - first) * rate / f.sample_rate) if margin else start - first
    data = data[offset : offset + length]
    if not np.isfinite(data).all():
        raise DataError(f"{f.path}: NaN or Inf samples; non-finite audio is refused")
    if channels == 1:
        data = data.mean(axis=1, keepdims=True)
    elif data.shape[1] == 1:
        data = np.repeat(data, 2, axis=1)
    else:
        data = data[:, :2]
    out = torch.zeros(channels, length)
    out[:, : len(data)] = torch.from_numpy(np.ascontiguousarray(data.T)).clamp_(-1.0, 1.0)
    return out  # (C, L)


def file_label(path: Path, root: Path, mode: str) -> str:
    """The label of ``path`` for ``data.labels`` = ``folder`` or ``filename_prefix``."""
    if mode == "folder":
        rel = path.parent.relative_to(root)
        if rel == Path("."):
            raise ConfigError(f"data.labels=folder: {path} is not inside a class folder of {root}")
        return rel.parts[0]
    m = re.match(r"[^_\-]+", path.stem)
    return m.group(0) if m else path.stem


def _class_order(names: set[str]) -> list[str]:
    """Sorted class names; numerically when every name is an integer (``2`` before ``10``)."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


class AudioFolderSource(FileSource):
    """Streaming audio segments; ``__getitem__(i) -> {"x": (C, L)[, "y": ()]}``."""

    def __init__(
        self,
        files: list[AudioFile],
        labels: list[int] | None,
        rate: int,
        length: int,
        channels: int,
        *,
        random_crop: bool,
        seed: int = 0,
        skip_errors: bool = False,
    ) -> None:
        super().__init__(seed=seed, augment=random_crop)
        self.files = files
        self.labels = labels
        self.rate = rate
        self.length = length
        self.channels = channels
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.files)

    def start(self, f: AudioFile, i: int) -> int:
        """The first output sample of sample ``i``'s segment: random (training) or centred."""
        total = math.floor(f.frames * self.rate / f.sample_rate)
        room = max(0, total - self.length)
        if self.augment and room > 0:
            return int(torch.randint(0, room + 1, (1,), generator=self.generator(i)))
        return room // 2

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        for k in range(len(self.files)):
            j = (i + k) % len(self.files)
            f = self.files[j]
            try:
                x = read_segment(f, self.rate, self.length, self.start(f, i), self.channels)
                break
            except DataError:
                if not self.skip_errors:
                    raise
                logger.warning("skipping unreadable audio %s (data.on_error=skip)", f.path)
        else:
            raise DataError(f"{self.files[0].path.parent}: no readable audio file left")
        out = {"x": x}
        if self.labels is not None:
            out["y"] = torch.tensor(self.labels[j], dtype=torch.long)
        return out


def check_channels(files: list[AudioFile], channels: int, asked: int | None) -> None:
    """Say once when files have more channels than are kept (a 6-channel file mixed down to mono, or cut to its
    first two), naming ``data.channels``."""
    wide = [f for f in files if f.channels > max(channels, 2)]
    if wide:
        what = "mixed down to mono" if channels == 1 else "cut to their first 2 channels"
        setting = f"data.channels={asked}" if asked is not None else "data.channels unset: mono"
        logger.warning(
            "warning: %d audio file(s) have more than 2 channels (e.g. %s: %d); %s (%s)",
            len(wide), wide[0].path, wide[0].channels, what, setting,
        )


def file_labels(files: list[AudioFile], root: Path, mode: str) -> tuple[list[int] | None, list[str] | None]:
    """(label index per file, sorted class names) for ``data.labels``; (None, None) for ``none``."""
    if mode == "none":
        return None, None
    names = [file_label(f.path, root, mode) for f in files]
    classes = _class_order(set(names))
    index = {c: k for k, c in enumerate(classes)}
    return [index[n] for n in names], classes


def build_audio_folder(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``audio_folder`` source: every sound file under ``data.path``, one segment per file per epoch."""
    root = data_dir(cfg.path, "audio_folder", "a directory of .wav/.flac/.ogg")
    paths = scan_audio(root)
    if not paths:
        raise DataError(f"{root}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) found")
    paths = paths[: cfg.num_samples] if cfg.num_samples is not None else paths
    # reading and validating: headers, truncation, non-finite float samples
    files, errors = probe_all(paths, probe_audio, cfg.on_error, "audio file(s)")  # threads do not help libsndfile
    if not files:
        raise DataError(f"{root}: no readable audio file")
    rates = sorted({f.sample_rate for f in files})
    if cfg.sample_rate is None and len(rates) > 1:
        raise ConfigError(
            f"data.sample_rate: the files under {root} have different rates ({', '.join(map(str, rates[:5]))} Hz); "
            "set data.sample_rate to resample them all"
        )
    rate = cfg.sample_rate or rates[0]
    length = max(1, round(cfg.segment * rate))
    channels = cfg.channels or 1
    check_channels(files, channels, cfg.channels)
    labels, classes = file_labels(files, root, cfg.labels)
    # assembling
    tr, va, te = split_three(len(files), cfg.split, cfg.val_fraction, seed)

    def source(idx: Tensor, train: bool) -> AudioFolderSource:
        ii = idx.tolist()
        lab = None if labels is None else [labels[i] for i in ii]
        return AudioFolderSource([files[i] for i in ii], lab, rate, length, channels, random_crop=train, seed=seed,
                                 skip_errors=cfg.on_error == "skip")

    train, val = source(tr, True), source(va, False)
    test = source(te, False) if len(te) else None
    durations = [f.frames / f.sample_rate for f in files]
    meta = {
        "sample_rate": rate,
        "segment_seconds": cfg.segment,
        "segment_samples": length,
        "channels": channels,
        "source_sample_rates": rates,
        "source_channels": sorted({f.channels for f in files}),
        "files": len(files),
        "median_duration_seconds": float(np.median(durations)),
        "shorter_than_segment": sum(d * rate < length for d in durations),
    }
    if classes is not None:
        meta["classes"] = classes
        meta["labels"] = cfg.labels
    shape = (channels, length)
    note = f"{root}, {rate} Hz, {cfg.segment:g} s segments, streaming" + (f", {len(errors)} skipped" if errors else "")
    info = DataInfo(
        modality="audio",
        shape=shape,
        n_train=len(train),
        n_val=len(val),
        n_test=len(te),
        value_range=(-1.0, 1.0),
        factor_names=["label"] if classes is not None else None,
        skipped=len(errors),
        description=describe("audio_folder", len(train), len(val), shape, note, len(te)),
        meta=meta,
    )
    return DataBundle(train, val, info, test)
