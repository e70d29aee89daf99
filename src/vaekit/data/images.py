"""Image folders: a recursive scan for .png/.jpg/.jpeg/.webp/.bmp, decoded with PIL, resized and cropped square.

Each image is converted to RGB (or L with ``data.channels: 1``), its short side resized to ``data.image_size``
(default 64) and cropped to a square: centre crop, or with ``data.crop: random`` a random crop for training;
``data.flip`` adds a random horizontal flip for training. Validation is always centre-cropped, never flipped.

Modes: 16-bit grayscale PNGs (PIL's ``I;16``/``I``) keep their precision (a float image, scaled by 65535; 8-bit
would clip everything above 255 to white); 16-bit colour PNGs arrive from PIL at 8 bits (the high byte), i.e.
also scaled by 65535 up to 1/255. Palette images are expanded through their palette. Images with alpha (LA, RGBA,
palette transparency) are composited over black (premultiplied), so colours hidden under alpha 0 never leak in.

Memory: without random augmentation, ``data.in_memory: auto`` decodes everything once at build into an
`ArraySource` when it fits in ``data.max_memory_mb``. With random crop or flip the sources stream (a `FileSource`
decodes and augments each sample, seeded per (seed, epoch, index)); ``in_memory: always`` is then an error.

Errors: every file is fully decoded once at build, in memory or streaming (a truncated PNG/JPEG opens but fails
to decode, so opening the header is not enough). An unreadable one raises `DataError` naming it, or with
``data.on_error: skip`` is left out, counted in `DataInfo.skipped` and listed in a warning. A file that becomes
unreadable after the build fails at load time the same way: ``raise`` stops with its name; ``skip`` logs a
warning and returns the next readable sample in its place.

Splits: ``data.split`` (train/val/test) when set, else ``data.val_fraction``. ``data.path`` may also be one image
file: it is then the validation split, for evaluation (``vaekit compare A B --data img.png``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.base import DataBundle, DataError, DataInfo, FileSource, describe, split_three
from vaekit.data.common import probe_all, three_sources
from vaekit.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
DEFAULT_SIZE = 64


def scan_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive, extension case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_image(path: Path, channels: int) -> Image.Image:
    """Open and fully decode ``path`` as RGB (channels 3), L (channels 1), or F (float in [0, 1], one channel)
    for high-bit-depth grayscale; DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return normalize_mode(img, channels)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def normalize_mode(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as L/RGB (8-bit sources) or F in [0, 1] (16/32-bit integer grayscale); alpha composited on black."""
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I: integer grayscale, PNG stores it at 16 bits
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return Image.fromarray(np.clip(arr, 0.0, 1.0).astype(np.float32))  # mode F
    if img.mode == "F":
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # through the palette, with its transparency if any
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def resize_and_crop(img: Image.Image, size: int, generator: torch.Generator | None = None) -> Image.Image:
    """Resize the short side to ``size`` (antialiased bicubic), then crop a ``size`` square: random if a
    generator is given, else centred."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    if generator is None:
        left, top = (nw - size) // 2, (nh - size) // 2
    else:
        left = int(torch.randint(0, nw - size + 1, (1,), generator=generator))
        top = int(torch.randint(0, nh - size + 1, (1,), generator=generator))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, channels: int | None = None) -> Tensor:
    """A PIL image as (C, H, W) float32 in [0, 1]; a float (F) image is clamped (bicubic overshoots) and, with
    ``channels=3``, repeated to RGB."""
    if img.mode == "F":
        x = torch.from_numpy(np.array(img, dtype=np.float32)).clamp_(0.0, 1.0)[None]  # (1, H, W)
        return x.expand(channels or 1, -1, -1).contiguous()
    arr = np.array(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32).div_(255.0)


class ImageFolderSource(FileSource):
    """Streaming image files; ``__getitem__(i) -> {"x": (C, size, size)}``."""

    def __init__(
        self,
        paths: list[Path],
        size: int,
        channels: int,
        *,
        random_crop: bool = False,
        flip: bool = False,
        seed: int = 0,
        skip_errors: bool = False,
    ) -> None:
        super().__init__(seed=seed, augment=random_crop or flip)
        self.paths = paths
        self.size = size
        self.channels = channels
        self.random_crop = random_crop
        self.flip = flip
        self.skip_errors = skip_errors
        self.skipped: set[Path] = set()
        """Files found unreadable while streaming (``data.on_error=skip``), in this process."""

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        g = self.generator(i) if self.augment else None
        for k in range(len(self.paths)):
            path = self.paths[(i + k) % len(self.paths)]
            try:
                img = load_image(path, self.channels)
                break
            except DataError as err:
                if not self.skip_errors:
                    raise
                if path not in self.skipped:  # once per file and process (each DataLoader worker warns for itself)
                    self.skipped.add(path)
                    logger.warning("warning: skipping unreadable image %s (data.on_error=skip; the next readable "
                                   "image takes its place): %s", path, err)
        else:
            raise DataError(f"{self.paths[0].parent}: no readable image left")
        img = resize_and_crop(img, self.size, g if self.random_crop else None)
        x = to_tensor(img, self.channels)  # (C, H, W)
        if self.flip and g is not None and bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        return {"x": x}


def _check_decodes(path: Path, channels: int) -> Path:
    """``path`` when it fully decodes (every pixel, converted to the mode used for training), else DataError."""
    load_image(path, channels)
    return path


def _decode_one(path: Path, size: int, channels: int) -> Tensor:
    return to_tensor(resize_and_crop(load_image(path, channels), size), channels)  # (C, H, W)


def _threads() -> int:
    return min(8, os.cpu_count() or 1)


def _in_memory(cfg: DataConfig, n: int, shape: tuple[int, ...]) -> bool:
    """Whether to decode everything once into memory (``data.in_memory``; never with random augmentation)."""
    augment = cfg.crop == "random" or cfg.flip
    if cfg.in_memory == "always" and augment:
        raise ConfigError(
            "data.in_memory=always: in-memory image folders are not augmented; "
            "set data.crop=center and data.flip=false, or data.in_memory=auto"
        )
    fits = n * math.prod(shape) * 4 < cfg.max_memory_mb * 2**20
    return cfg.in_memory == "always" or (cfg.in_memory == "auto" and fits and not augment)


def build_image_folder(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``image_folder`` source: a seeded split (``data.split``, else ``data.val_fraction``) of the image files
    under ``data.path`` (a directory, or one image file: then it is all validation data).

    Every file is fully decoded at build, in memory or streaming, so a truncated or corrupt file gets the same
    answer either way: one line naming it (``data.on_error=raise``), or skipped and counted (``skip``).
    """
    if cfg.path is None:
        raise ConfigError("data.path: required for data.source=image_folder (a directory of image files)")
    size = cfg.image_size or DEFAULT_SIZE
    channels = 1 if cfg.channels == 1 else 3
    shape = (channels, size, size)
    single = Path(cfg.path).is_file() and Path(cfg.path).suffix.lower() in IMAGE_EXTENSIONS
    paths = [Path(cfg.path)] if single else scan_images(cfg.path)
    paths = paths[: cfg.num_samples] if cfg.num_samples is not None else paths
    in_memory = _in_memory(cfg, len(paths), shape)
    # reading and validating: a full decode of every file (the decoded tensors are kept when in memory)
    if in_memory:
        pairs, errors = probe_all(paths, lambda p: (p, _decode_one(p, size, channels)), cfg.on_error, "image(s)",
                                  _threads())
    else:
        pairs, errors = probe_all(paths, lambda p: (_check_decodes(p, channels), None), cfg.on_error, "image(s)",
                                  _threads())
    if not pairs:
        raise DataError(f"{cfg.path}: no readable image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    # assembling
    split = [0.0, 1.0, 0.0] if single else cfg.split
    tr, va, te = split_three(len(pairs), split, cfg.val_fraction, seed)
    if in_memory:
        x = torch.stack([t for _, t in pairs])  # (N, C, H, W)
        train, val, test = three_sources(x, tr, va, te)
    else:
        readable = [p for p, _ in pairs]

        def source(idx: Tensor, training: bool) -> ImageFolderSource:
            return ImageFolderSource(
                [readable[i] for i in idx.tolist()],
                size,
                channels,
                random_crop=training and cfg.crop == "random",
                flip=training and cfg.flip,
                seed=seed,
                skip_errors=cfg.on_error == "skip",
            )

        train, val, test = source(tr, True), source(va, False), source(te, False) if len(te) else None
    n_test = len(test) if test is not None else 0
    note = f"{cfg.path}, {'in memory' if in_memory else 'streaming'}" + (
        f", {len(errors)} skipped" if errors else ""
    )
    info = DataInfo(
        modality="image",
        shape=shape,
        n_train=len(train),
        n_val=len(val),
        n_test=n_test,
        value_range=(0.0, 1.0),
        skipped=len(errors),
        description=describe("image_folder", len(train), len(val), shape, note, n_test),
    )
    return DataBundle(train, val, info, test)
