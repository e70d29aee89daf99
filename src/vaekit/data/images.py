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

Errors: every file is opened at build (header only). An unreadable one raises `DataError` naming it, or with
``data.on_error: skip`` is left out, counted in `DataInfo.skipped` and listed in a warning. A file that opens but
fails to decode is found at build when in memory (and treated the same way) or, when streaming, at load time:
``raise`` stops with its name; ``skip`` logs a warning and returns the next readable sample in its place.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.base import ArraySource, DataBundle, DataError, DataInfo, FileSource, describe, split_indices

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


def _probe(path: Path) -> str | None:
    """None if ``path`` opens as an image (header only), else the reason."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsing the header is the check
        return None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e)


def _decode_all(paths: list[Path], size: int, channels: int) -> list[Tensor | DataError]:
    def one(p: Path) -> Tensor | DataError:
        try:
            return to_tensor(resize_and_crop(load_image(p, channels), size), channels)
        except DataError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        return list(pool.map(one, paths))


def _report_skipped(errors: list[str], on_error: str) -> None:
    if not errors:
        return
    if on_error == "raise":
        raise DataError(errors[0] + " (set data.on_error=skip to skip unreadable files)")
    shown = "; ".join(errors[:5]) + (f"; … {len(errors) - 5} more" if len(errors) > 5 else "")
    logger.warning("skipped %d unreadable image(s) (data.on_error=skip): %s", len(errors), shown)


def build_image_folder(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``image_folder`` source: a seeded ``data.val_fraction`` split of the files under ``data.path``."""
    if cfg.path is None:
        raise ValueError("data.path: required for data.source=image_folder (a directory of image files)")
    size = cfg.image_size or DEFAULT_SIZE
    channels = 1 if cfg.channels == 1 else 3
    paths = scan_images(cfg.path)
    if cfg.num_samples is not None:
        paths = paths[: cfg.num_samples]

    errors: list[str] = []
    readable = []
    for p in paths:
        reason = _probe(p)
        if reason is None:
            readable.append(p)
        else:
            errors.append(f"{p}: cannot open image ({reason})")
    _report_skipped(errors, cfg.on_error)
    if not readable:
        raise DataError(f"{cfg.path}: no readable image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")

    augment = cfg.crop == "random" or cfg.flip
    fits = len(readable) * channels * size * size * 4 < cfg.max_memory_mb * 2**20
    if cfg.in_memory == "always" and augment:
        raise ValueError(
            "data.in_memory=always: in-memory image folders are not augmented; "
            "set data.crop=center and data.flip=false, or data.in_memory=auto"
        )
    in_memory = cfg.in_memory == "always" or (cfg.in_memory == "auto" and fits and not augment)

    tr_idx, va_idx = split_indices(len(readable), cfg.val_fraction, seed)
    tr_paths, va_paths = [readable[i] for i in tr_idx], [readable[i] for i in va_idx]
    if in_memory:
        decode_errors, splits = [], []
        for ps in (tr_paths, va_paths):
            out = _decode_all(ps, size, channels)
            decode_errors += [str(e) for e in out if isinstance(e, DataError)]
            xs = [t for t in out if isinstance(t, Tensor)]
            splits.append(torch.stack(xs) if xs else torch.zeros(0, channels, size, size))  # (N, C, H, W)
        _report_skipped(decode_errors, cfg.on_error)
        errors += decode_errors
        train, val = ArraySource(splits[0]), ArraySource(splits[1])
    else:
        skip = cfg.on_error == "skip"
        train = ImageFolderSource(
            tr_paths,
            size,
            channels,
            random_crop=cfg.crop == "random",
            flip=cfg.flip,
            seed=seed,
            skip_errors=skip,
        )
        val = ImageFolderSource(va_paths, size, channels, seed=seed, skip_errors=skip)

    shape = (channels, size, size)
    mode = "in memory" if in_memory else "streaming"
    note = f"{cfg.path}, {mode}" + (f", {len(errors)} skipped" if errors else "")
    info = DataInfo(
        modality="image",
        shape=shape,
        n_train=len(train),
        n_val=len(val),
        value_range=(0.0, 1.0),
        skipped=len(errors),
        description=describe("image_folder", len(train), len(val), shape, note),
    )
    return DataBundle(train, val, info)
