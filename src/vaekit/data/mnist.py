"""MNIST from the original IDX files (``.gz`` or uncompressed), read with gzip + numpy; no torchvision download.

Test split = t10k (10k); validation = a seeded ``data.val_fraction`` of MNIST train (60k), the rest trains.
Every file is checked (magic number, dimensions, length); a missing, truncated or corrupt one raises `DataError`
naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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
from vaekit.errors import ConfigError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_file(root: Path, name: str) -> Path:
    """``root/name.gz`` or ``root/name``; DataError when neither exists."""
    for p in (root / f"{name}.gz", root / name):
        if p.is_file():
            return p
    raise DataError(f"{root / name}.gz: not found (nor the uncompressed {name})")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions.

    Raises:
        DataError: naming ``path`` if it cannot be read, is not gzip when named ``.gz``, has the wrong magic
            number or dimension count, or its length does not match its header.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is an EOFError
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e or 'truncated'})") from e
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(
            f"{path}: magic number {magic:#010x}, expected {0x0800 + ndim:#010x} (ubyte, {ndim}-d)"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected} for dimensions {dims} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(root: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """Load one file pair ("train", or "val" = t10k, the test set).

    Returns:
        x: (N, 1, 28, 28) float32 in [0, 1]; y: (N,) int64 digit labels.
    """
    root = Path(root)
    img_name, lbl_name = FILES[split]
    img_path, lbl_path = find_file(root, img_name), find_file(root, lbl_name)
    images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{lbl_path}: {len(labels)} labels for {len(images)} images in {img_path}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} outside 0-9")
    x = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255.0)  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def resize(x: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of (N, C, H, W) to (N, C, size, size), clamped to [0, 1]."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(
        0, 1
    )


def build_mnist(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``mnist`` source (``data.path`` = the directory with the IDX files).

    Test = the official t10k files; validation = a seeded fraction of the training files: ``data.val_fraction``,
    or with ``data.split: [train, val, test]`` the share ``val / (train + val)`` (the test fraction is not used:
    t10k is the test set). ``data.num_samples`` keeps the first N of each file.
    """
    if cfg.path is None:
        raise ConfigError(
            "data.path: required for data.source=mnist (a directory with train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)"
        )
    arrays = []
    for split in ("train", "val"):
        x, y = load_mnist(cfg.path, split)
        if cfg.num_samples is not None:
            x, y = x[: cfg.num_samples], y[: cfg.num_samples]
        if cfg.image_size is not None:
            x = resize(x, cfg.image_size)
        arrays.append((match_channels(x, cfg.channels), y))
    (x, y), (x_test, y_test) = arrays
    val_fraction = cfg.val_fraction if cfg.split is None else cfg.split[1] / (cfg.split[0] + cfg.split[1])
    tr, va = split_indices(len(x), val_fraction, seed)
    train, val, test = ArraySource(x[tr], y[tr]), ArraySource(x[va], y[va]), ArraySource(x_test, y_test)
    shape = tuple(train.x.shape[1:])
    note = f"IDX files in {cfg.path}, test = t10k"
    info = DataInfo(
        modality="image",
        shape=shape,
        n_train=len(train),
        n_val=len(val),
        n_test=len(test),
        value_range=(0.0, 1.0),
        factor_names=["digit"],
        description=describe("mnist", len(train), len(val), shape, note, len(test)),
    )
    return DataBundle(train, val, info, test)
