"""Inputs a user hands over that used to be silently wrong: high-bit-depth and alpha images, odd arrays from Python."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.config.schema import DataConfig
from vaekit.data import build_data, from_arrays
from vaekit.errors import ConfigError


# ------------------------------------------------------------------------------------------ images
def _png16(path: Path, arr: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG (PIL writes 16-bit grayscale only): color type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _gradient16(size: int = 16) -> np.ndarray:
    return np.linspace(0, 65535, size * size).round().astype(np.uint16).reshape(size, size)  # (H, W)


def _folder(root: Path, channels: int | None = None) -> DataConfig:
    return DataConfig(source="image_folder", path=str(root), image_size=16, val_fraction=0.0, channels=channels)


@pytest.mark.parametrize("in_memory", ["always", "never"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_grayscale_png_keeps_its_values_scaled_by_65535(tmp_path: Path, in_memory: str, channels: int) -> None:
    g = _gradient16()
    Image.fromarray(g).save(tmp_path / "g16.png")  # PIL writes mode I;16 as a 16-bit grayscale PNG
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    b = build_data(_folder(tmp_path, channels).model_copy(update={"in_memory": in_memory}), seed=0)
    x = b.train[0]["x"]  # (C, 16, 16)
    assert x.shape == (channels, 16, 16)
    expected = torch.from_numpy(g.astype(np.float32) / 65535.0)
    assert torch.allclose(x, expected.expand_as(x), atol=1e-6)
    assert float((x == 1.0).float().mean()) < 0.01  # was 98% white: every value above 255 clipped


def test_16bit_colour_pngs_with_and_without_alpha_are_scaled_by_65535(tmp_path: Path) -> None:
    g = _gradient16()
    rgb = np.stack([g, 65535 - g, np.full_like(g, 32896)], -1)  # (H, W, 3)
    _png16(tmp_path / "rgb16.png", rgb, 2)
    opaque = np.concatenate([rgb, np.full_like(g, 65535)[..., None]], -1)
    _png16(tmp_path / "rgba16.png", opaque, 6)
    expected = torch.from_numpy(rgb.astype(np.float32) / 65535.0).permute(2, 0, 1)  # (3, H, W)
    for name in ("rgb16.png", "rgba16.png"):
        root = tmp_path / name.split(".")[0]
        root.mkdir()
        (tmp_path / name).rename(root / name)
        x = build_data(_folder(root), seed=0).train[0]["x"]
        assert torch.allclose(x, expected, atol=1 / 255 + 1e-6), name  # PIL keeps the high byte of each value


def test_gray_alpha_16bit_png_is_composited_over_black(tmp_path: Path) -> None:
    g = _gradient16()
    _png16(tmp_path / "la16.png", np.stack([g, np.full_like(g, 65535 // 2)], -1), 4)
    x = build_data(_folder(tmp_path, channels=1), seed=0).train[0]["x"]  # (1, H, W)
    expected = torch.from_numpy(g.astype(np.float32) / 65535.0) * 0.5
    assert torch.allclose(x[0], expected, atol=2 / 255)


def test_palette_png_is_read_through_its_palette(tmp_path: Path) -> None:
    idx = (np.arange(16 * 16) % 3).astype(np.uint8).reshape(16, 16)
    img = Image.fromarray(idx).convert("P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
    img.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    x = build_data(_folder(tmp_path), seed=0).train[0]["x"]  # (3, H, W)
    colours = torch.eye(3)[torch.from_numpy(idx).long()].permute(2, 0, 1)  # index k -> pure channel k
    assert torch.equal(x, colours)


def test_rgba_hidden_colour_under_zero_alpha_does_not_leak(tmp_path: Path) -> None:
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[..., :3] = 255  # white everywhere ...
    arr[:8, :, 3] = 255  # ... but only the top half is visible
    Image.fromarray(arr).save(tmp_path / "rgba.png")
    x = build_data(_folder(tmp_path), seed=0).train[0]["x"]
    assert torch.equal(x[:, :8], torch.ones(3, 8, 16)) and torch.equal(x[:, 8:], torch.zeros(3, 8, 16))


# ------------------------------------------------------------------------------------------ arrays
@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.array([[1, "a"], [2, None]], dtype=object), "x: object array"),
        (np.array([["a", "b"], ["c", "d"]]), "x: string array"),
        (np.ones((4, 3), dtype=np.complex64), "x: complex dtype"),
        ([[1.0, 2.0], [3.0]], "x: cannot be read as one array"),
        (torch.ones(4, 3, dtype=torch.complex64), "x: complex dtype"),
    ],
)
def test_arrays_of_non_numbers_are_refused_naming_the_argument(x: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        from_arrays(x)
    assert "\n" not in str(err.value)


def test_labels_of_the_wrong_length_name_both_lengths() -> None:
    with pytest.raises(ConfigError, match=r"^y: 7 labels for 10 samples in x"):
        from_arrays(torch.rand(10, 3), torch.zeros(7))
    with pytest.raises(ConfigError, match=r"^val_y: 2 labels for 5 samples in val_x"):
        from_arrays(torch.rand(10, 3), torch.zeros(10), val_x=torch.rand(5, 3), val_y=torch.zeros(2))


def test_tensors_that_require_grad_are_detached() -> None:
    x = torch.rand(10, 3, requires_grad=True)
    b = from_arrays(x, val_fraction=0.2)
    assert not b.train.x.requires_grad and not b.val.x.requires_grad
    assert torch.equal(torch.cat([b.train.x, b.val.x]).sort(0).values, x.detach().sort(0).values)


def test_non_finite_values_are_reported_for_the_array_they_are_in_with_count_and_first_index() -> None:
    val_x = torch.rand(5, 3)
    val_x[2, 1] = float("inf")
    val_x[4, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"^val_x: contains NaN or Inf: 2 value\(s\), the first at val_x\[2, 1\]"):
        from_arrays(torch.rand(10, 3), val_x=val_x)
    x = torch.rand(40, 3)
    x[37, 2] = float("nan")  # with the seeded split, sample 37 may land in either part: it is still x's
    for seed in range(4):
        with pytest.raises(ConfigError, match=r"^x: contains NaN or Inf: 1 value\(s\), the first at x\[37, 2\]"):
            from_arrays(x, val_fraction=0.5, seed=seed)
