"""WebDataset tar shards (source ``webdataset``): indexed once, read by member offset, decoded as the folders do.

``data.path`` is a brace pattern (``shards/train-{000000..000127}.tar``), a glob, a list of shards separated by
`` :: ``, or URLs that fsspec opens (``https://…``, ``s3://…`` with its package). A sample is the group of members
sharing a key (the member name up to the first dot of its base name, the webdataset convention); its ``x`` member
is an image (``png``/``jpg``/…: decoded, resized and cropped as image_folder), a video (``mp4``/``webm``/…: a clip
of ``data.frames`` frames, as video_folder), a sound (``wav``/``flac``/…: a segment, as audio_folder) or an array
(``npy``: as stored; uint8 arrays scaled to [0, 1]). ``y`` is a ``cls`` member (an integer) or a ``y.npy`` array.

Order and resume: at build every shard's tar headers are read (no payload), giving each sample's member offsets.
The samples then form a map-style `FileSource`, so they go through `BatchLoader` like a folder: one seeded
permutation of ALL samples per epoch (no shuffle buffer is needed: it is a true global shuffle), each global batch
split into disjoint per-process slices, data workers reading the indices they are handed, and resume at the exact
global batch of the exact epoch. A sample is read with one seek and one read of its members: cheap on local disks
and in the page cache; over HTTP each sample is one range request (shards larger than memory stay on the server).

Errors: a shard that cannot be opened or read is named in one line; a truncated shard (a member running past the
end of the file) is named, or with ``data.on_error=skip`` its incomplete samples are left out and counted. A member
that does not decode is named at load (``shard.tar:key.ext``) or, with ``skip``, replaced by the next readable
sample (a warning names it). A pattern that matches nothing is one line.

``dataset.json`` beside local shards (written by ``vaekit shard``) supplies the label names, the source's meta, the
value range and, for shards packed from a config, the default channels and size (MNIST stays 1x28x28).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.audio import probe_audio, read_segment
from vaekit.data.base import DataBundle, DataError, DataInfo, FileSource, describe, split_three
from vaekit.data.images import DEFAULT_SIZE, normalize_mode, resize_and_crop, to_tensor
from vaekit.data.video import decode_frames, probe_video
from vaekit.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGE_EXT = {"png", "jpg", "jpeg", "webp", "bmp"}
VIDEO_EXT = {"mp4", "webm", "mkv", "avi", "mov"}
AUDIO_EXT = {"wav", "flac", "ogg", "oga", "aif", "aiff", "mp3"}
ARRAY_EXT = {"npy"}
_KINDS = {"image": IMAGE_EXT, "video": VIDEO_EXT, "audio": AUDIO_EXT}
DATASET_FILE = "dataset.json"
"""Written by ``vaekit shard`` beside its shards: sample counts, modality, shape, labels (read when present)."""


@dataclass(frozen=True)
class Member:
    """Where one tar member's bytes lie."""

    offset: int
    size: int


@dataclass(frozen=True)
class ShardSample:
    """One sample: its shard, its key and its members by extension."""

    shard: int
    key: str
    members: dict[str, Member]


# ----------------------------------------------------------------------------------------- shard lists
def expand_shards(pattern: str) -> list[str]:
    """The shards named by ``pattern``: brace expansion (``{000..127}``), `` :: `` lists, then globs of local
    paths; URLs are kept as written. DataError when nothing matches."""
    import braceexpand

    urls: list[str] = []
    for part in pattern.split("::"):
        for name in braceexpand.braceexpand(part.strip()):
            if "://" in name and not name.startswith("file://"):
                urls.append(name)
                continue
            name = name.removeprefix("file://")
            found = sorted(glob.glob(os.path.expanduser(name))) if glob.has_magic(name) else [name]
            if Path(name).is_dir():
                found = sorted(str(p) for p in Path(name).glob("*.tar"))
            urls += [f for f in found if Path(f).is_file()]
    if not urls:
        raise DataError(f"{pattern}: no shard matches (a brace pattern, a glob, a folder of .tar or URLs)")
    return urls


def open_shard(url: str) -> Any:
    """A binary file object for ``url`` (a local path or anything fsspec opens)."""
    if "://" not in url:
        return open(url, "rb")  # noqa: SIM115 - the caller closes it
    import fsspec

    return fsspec.open(url, "rb").open()


def split_key(name: str) -> tuple[str, str]:
    """``dir/000001.y.npy`` → (``dir/000001``, ``y.npy``): the webdataset key and extension."""
    base = name.rsplit("/", 1)
    stem, _, ext = base[-1].partition(".")
    key = f"{base[0]}/{stem}" if len(base) == 2 else stem
    return key, ext.lower()


def index_shard(url: str, shard: int, skip: bool) -> tuple[list[ShardSample], str | None]:
    """The samples of one shard (tar headers only) and, when it is truncated or unreadable, the reason."""
    samples: dict[str, dict[str, Member]] = {}
    problem = None
    try:
        with open_shard(url) as f:
            f.seek(0, io.SEEK_END)
            end = f.tell()
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if not info.isfile() or info.name.startswith("__") or "/." in f"/{info.name}":
                        continue
                    key, ext = split_key(info.name)
                    if info.offset_data + info.size > end:
                        problem = f"truncated (member {info.name} runs past the end of the file)"
                        samples.pop(key, None)  # the sample broken off may miss members
                        break
                    samples.setdefault(key, {})[ext] = Member(info.offset_data, info.size)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        problem = f"cannot read tar ({type(e).__name__}: {e})"
    if problem is not None and not skip:
        raise DataError(f"{url}: {problem} (set data.on_error=skip to leave its incomplete samples out)")
    return [ShardSample(shard, k, m) for k, m in samples.items()], problem


def index_shards(urls: list[str], skip: bool) -> tuple[list[ShardSample], list[str]]:
    """Every sample of ``urls`` in shard order, and the problems met (with ``skip``)."""
    samples, problems = [], []
    for i, url in enumerate(urls):
        got, problem = index_shard(url, i, skip)
        samples += got
        if problem:
            problems.append(f"{url}: {problem}")
    if problems:
        logger.warning("skipped %d broken shard tail(s) (data.on_error=skip): %s", len(problems), "; ".join(problems[:5]))
    return samples, problems


def pick_member(sample: ShardSample, wanted: str | None, url: str) -> str:
    """The extension of the member holding ``x``."""
    if wanted is not None:
        if wanted.lower() not in sample.members:
            raise ConfigError(
                f"data.shards.member: {wanted!r} not in sample {sample.key} of {url} (it has {sorted(sample.members)})"
            )
        return wanted.lower()
    for ext in sample.members:
        if ext in IMAGE_EXT | VIDEO_EXT | AUDIO_EXT | ARRAY_EXT:
            return ext
    raise DataError(
        f"{url}: sample {sample.key} has no image/video/audio/npy member ({sorted(sample.members)}); "
        "set data.shards.member"
    )


def modality_of(ext: str, array: np.ndarray | None = None) -> str:
    """The modality of a member: by extension, or for arrays by rank (1 tabular, 2 audio, 3 image, 4 video)."""
    if ext in IMAGE_EXT:
        return "image"
    if ext in VIDEO_EXT:
        return "video"
    if ext in AUDIO_EXT:
        return "audio"
    assert array is not None
    kinds = {1: "tabular", 2: "audio", 3: "image", 4: "video"}
    if array.ndim not in kinds:
        raise DataError(f"an npy member of rank {array.ndim}: expected 1 (D,), 2 (C, L), 3 (C, H, W) or 4 (C, T, H, W)")
    return kinds[array.ndim]


# ------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Decode:
    """How a member becomes ``x``: the folder sources' settings."""

    ext: str
    modality: str
    size: int = DEFAULT_SIZE
    channels: int = 3
    frames: int = 8
    stride: int = 1
    rate: int = 16000
    length: int = 16000
    random_crop: bool = False
    flip: bool = False


def _via_file(data: bytes, ext: str, fn: Any) -> Any:
    """``fn(path)`` on the bytes written to a temporary file (the audio and video readers take paths)."""
    with tempfile.NamedTemporaryFile(suffix=f".{ext.rsplit('.', 1)[-1]}", dir=_tmp_dir()) as tmp:
        tmp.write(data)
        tmp.flush()
        return fn(Path(tmp.name))


def _tmp_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def decode_member(data: bytes, d: Decode, g: torch.Generator | None) -> Tensor:
    """One member's bytes as ``x`` (image (C, H, W), video (C, T, H, W), audio (C, L), array as stored).

    ``g``: the per-sample generator (training augmentation: random crop/flip, clip start, segment start)."""
    if d.modality == "image" and d.ext in IMAGE_EXT:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = normalize_mode(img, d.channels)
        img = resize_and_crop(img, d.size, g if d.random_crop else None)
        x = to_tensor(img, d.channels)  # (C, H, W)
        if d.flip and g is not None and bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        return x
    if d.ext in VIDEO_EXT:
        return _via_file(data, d.ext, lambda p: _video_clip(p, d, g))
    if d.ext in AUDIO_EXT:
        return _via_file(data, d.ext, lambda p: _audio_segment(p, d, g))
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    x = torch.from_numpy(np.ascontiguousarray(arr))
    return x.to(torch.float32).div_(255.0) if arr.dtype == np.uint8 else x.to(torch.float32)


def _video_clip(path: Path, d: Decode, g: torch.Generator | None) -> Tensor:
    item = probe_video(path)
    span = (d.frames - 1) * d.stride + 1
    room = max(0, item.frames - span)
    start = int(torch.randint(0, room + 1, (1,), generator=g)) if g is not None and d.random_crop else room // 2
    idx = [min(start + k * d.stride, item.frames - 1) for k in range(d.frames)]
    return decode_frames(path, idx, d.size, d.channels, seek=item.seekable)  # (C, T, H, W)


def _audio_segment(path: Path, d: Decode, g: torch.Generator | None) -> Tensor:
    f = probe_audio(path)
    total = math.floor(f.frames * d.rate / f.sample_rate)
    room = max(0, total - d.length)
    start = int(torch.randint(0, room + 1, (1,), generator=g)) if g is not None and d.random_crop and room else room // 2
    return read_segment(f, d.rate, d.length, start, d.channels)  # (C, L)


class ShardSource(FileSource):
    """Samples of tar shards, read by offset; ``__getitem__(i) -> {"x": ...[, "y": ...]}``."""

    def __init__(self, urls: list[str], samples: list[ShardSample], decode: Decode, label: str | None, *,
                 seed: int = 0, skip_errors: bool = False) -> None:
        super().__init__(seed=seed, augment=decode.random_crop or decode.flip)
        self.urls, self.samples, self.decode, self.label = urls, samples, decode, label
        self.skip_errors = skip_errors
        self.fixed = False
        """True when ``data.shards.member`` names the member; else a sample lacking it uses its own member of the
        same modality (a folder of .mp4 and .avi files)."""
        self.skipped: set[str] = set()
        """Members found undecodable while streaming (``data.on_error=skip``), in this process."""

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, s: ShardSample, ext: str) -> bytes:
        """The bytes of member ``ext`` of sample ``s``."""
        m = s.members.get(ext)
        if m is None:
            raise DataError(f"{self.urls[s.shard]}: sample {s.key} has no {ext} member (it has {sorted(s.members)})")
        try:
            with open_shard(self.urls[s.shard]) as f:
                f.seek(m.offset)
                data = f.read(m.size)
        except OSError as e:
            raise DataError(f"{self.urls[s.shard]}: cannot read {s.key}.{ext} ({e})") from e
        if len(data) != m.size:
            raise DataError(f"{self.urls[s.shard]}: {s.key}.{ext} is truncated")
        return data

    def load(self, i: int) -> dict[str, Tensor]:
        """Sample ``i`` decoded; DataError naming ``shard:key.ext`` when a member does not decode."""
        s, d = self.samples[i], self.decode
        if d.ext not in s.members and not self.fixed:  # e.g. an .avi among .mp4s: the sample's own kind
            ext = next((e for e in s.members if e in _KINDS.get(d.modality, set()) and e not in ARRAY_EXT), None)
            d = Decode(**{**d.__dict__, "ext": ext}) if ext else d
        where = f"{self.urls[s.shard]}:{s.key}.{d.ext}"
        try:
            x = decode_member(self.read(s, d.ext), d, self.generator(i) if self.augment else None)
        except DataError as e:
            raise DataError(f"{where}: {str(e).split(': ', 1)[-1]}") from e
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{where}: cannot decode ({type(e).__name__}: {e})") from e
        out = {"x": x}
        if self.label is not None:
            raw = self.read(s, self.label)
            try:
                out["y"] = (torch.tensor(int(raw.decode().strip()), dtype=torch.long) if self.label == "cls"
                            else torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False)).to(torch.float32))
            except ValueError as e:
                raise DataError(f"{self.urls[s.shard]}:{s.key}.{self.label}: not a label ({e})") from e
        return out

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            try:
                return self.load(j)
            except DataError as err:
                if not self.skip_errors:
                    raise
                if str(err) not in self.skipped:  # once per member and process
                    self.skipped.add(str(err))
                    logger.warning("warning: skipping undecodable sample (data.on_error=skip; the next readable "
                                   "sample takes its place): %s", err)
        raise DataError(f"{self.urls[0]}: no readable sample left")


# ------------------------------------------------------------------------------------------- the source
def _label_member(first: ShardSample, wanted: str | None, url: str) -> str | None:
    if wanted is not None:
        if wanted.lower() not in first.members:
            raise ConfigError(f"data.shards.label: {wanted!r} not in sample {first.key} of {url} ({sorted(first.members)})")
        return wanted.lower()
    return next((e for e in ("cls", "y.npy") if e in first.members), None)


def _dataset_meta(urls: list[str]) -> dict[str, Any]:
    """``dataset.json`` beside local shards written by ``vaekit shard`` (empty when absent)."""
    if "://" in urls[0]:
        return {}
    f = Path(urls[0]).parent / DATASET_FILE
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        return {}


def _decode_settings(cfg: DataConfig, ext: str, probe: ShardSource, stored: dict[str, Any]) -> Decode:
    """The folder sources' settings for member ``ext``; audio reads its rate from the first sample. Shards packed
    from a config (``dataset.json`` with a shape) default to that shape's channels and size."""
    modality = modality_of(ext, None if ext != "npy" else np.load(io.BytesIO(probe.read(probe.samples[0], ext))))
    shape = stored.get("shape") if stored.get("modality") == modality else None
    channels = cfg.channels or (shape[0] if shape and modality != "audio" else 1 if modality == "audio" else 3)
    size = cfg.image_size or (shape[-1] if shape and modality in ("image", "video") else DEFAULT_SIZE)
    if modality == "audio" and ext in AUDIO_EXT:
        rate = cfg.sample_rate or _via_file(probe.read(probe.samples[0], ext), ext, probe_audio).sample_rate
        return Decode(ext, modality, channels=channels, rate=rate, length=round(cfg.segment * rate),
                      random_crop=True)
    if modality in ("image", "video") and ext not in ARRAY_EXT and channels not in (1, 3):
        raise ConfigError(f"data.channels: must be 1 or 3 for {modality} members (got {channels})")
    return Decode(ext, modality, size=size, channels=channels, frames=cfg.frames,
                  stride=cfg.frame_stride, random_crop=cfg.crop == "random" or ext in VIDEO_EXT, flip=cfg.flip)


def build_shards(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``webdataset`` source: the samples of the shards of ``data.path`` (and ``data.shards.val_path``)."""
    if cfg.path is None:
        raise ConfigError("data.path: required for data.source=webdataset (tar shards: a brace pattern, glob or URL)")
    skip = cfg.on_error == "skip"
    urls = expand_shards(cfg.path)
    samples, problems = index_shards(urls, skip)
    if not samples:
        raise DataError(f"{cfg.path}: the shards hold no sample")
    if cfg.num_samples is not None:
        samples = samples[: cfg.num_samples]
    ext = pick_member(samples[0], cfg.shards.member, urls[0])
    label = _label_member(samples[0], cfg.shards.label, urls[0])
    probe = ShardSource(urls, samples, Decode(ext, "tabular"), None)
    stored = _dataset_meta(urls)
    d = _decode_settings(cfg, ext, probe, stored)
    def make(u: list[str], ss: list[ShardSample], dd: Decode) -> ShardSource:
        src = ShardSource(u, ss, dd, label, seed=seed, skip_errors=skip)
        src.fixed = cfg.shards.member is not None
        return src

    evaluation = Decode(**{**d.__dict__, "random_crop": False, "flip": False})
    if cfg.shards.val_path is not None:
        val_urls = expand_shards(cfg.shards.val_path)
        val_samples, val_problems = index_shards(val_urls, skip)
        problems += val_problems
        train, val, test = make(urls, samples, d), make(val_urls, val_samples, evaluation), None
    else:
        tr, va, te = split_three(len(samples), cfg.split, cfg.val_fraction, seed)
        train = make(urls, [samples[i] for i in tr], d)
        val = make(urls, [samples[i] for i in va], evaluation)
        test = make(urls, [samples[i] for i in te], evaluation) if len(te) else None
    shape = tuple(val[0]["x"].shape if len(val) else train[0]["x"].shape)
    meta = dict(stored.get("meta", {}))
    if d.modality == "audio":
        meta = {**meta, "sample_rate": d.rate}
    y = train[0].get("y")
    factor_names = None if y is None else (["label"] if y.ndim == 0 else [f"y{i}" for i in range(y.numel())])
    low = -1.0 if d.modality == "audio" else 0.0
    value_range = tuple(stored["value_range"]) if "value_range" in stored else (low, 1.0)
    factor_names = stored.get("factor_names", factor_names) if y is not None else None
    n_test = len(test) if test is not None else 0
    note = f"{len(urls)} shard(s) {cfg.path}, member {ext}" + (f", {len(problems)} broken shard(s)" if problems else "")
    info = DataInfo(modality=d.modality, shape=shape, n_train=len(train), n_val=len(val),  # type: ignore[arg-type]
                    value_range=value_range, factor_names=factor_names, skipped=len(problems),
                    description=describe("webdataset", len(train), len(val), shape, note, n_test),
                    n_test=n_test, meta=meta)
    return DataBundle(train, val, info, test)
