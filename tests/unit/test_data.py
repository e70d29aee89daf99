"""Unit tests for vaekit.data: procedural sources, file readers, splits and the batch loader (tiny data in tmp)."""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.config.schema import DataConfig
from vaekit.data import (
    ArraySource,
    BatchLoader,
    DataError,
    FileSource,
    build_data,
    from_arrays,
    make_moving_shapes,
    make_shapes,
    read_video_clips,
    split_indices,
)
from vaekit.data.mnist import read_idx
from vaekit.data.shapes import FACTOR_VALUES, positions, render
from vaekit.data.video import bounce


# ------------------------------------------------------------------------------------------ shapes
def test_shapes_are_deterministic_from_seed_and_differ_across_seeds() -> None:
    x1, f1 = make_shapes(64, size=32, seed=3)
    x2, f2 = make_shapes(64, size=32, seed=3)
    x3, f3 = make_shapes(64, size=32, seed=4)
    assert x1.shape == (64, 1, 32, 32) and x1.dtype == torch.float32 and f1.shape == (64, 5)
    assert torch.equal(x1, x2) and torch.equal(f1, f2)
    assert not torch.equal(x1, x3) and not torch.equal(f1, f3)
    assert set(x1.unique().tolist()) == {0.0, 1.0}


def test_shapes_factors_lie_on_the_dsprites_grid() -> None:
    _, f = make_shapes(500, size=16, seed=0)
    for col, values in enumerate(FACTOR_VALUES):
        assert torch.isin(f[:, col], torch.from_numpy(values)).all()
    assert len(FACTOR_VALUES[2]) == 40 and len(FACTOR_VALUES[3]) == 32 and len(FACTOR_VALUES[1]) == 6


def _one(shape: int, scale: float, angle: float, px: float, py: float, size: int = 64) -> np.ndarray:
    arr = lambda v: np.array([v], dtype=np.float32)  # noqa: E731
    cx, cy = positions(arr(px), size), positions(arr(py), size)
    return render(np.array([shape]), arr(scale), arr(angle), cx, cy, size)[0]


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_shapes_larger_scale_has_more_white_pixels(shape: int) -> None:
    areas = [_one(shape, s, 0.3, 0.5, 0.5).sum() for s in FACTOR_VALUES[1]]
    assert all(a < b for a, b in zip(areas, areas[1:], strict=False))
    assert areas[0] > 10  # the smallest sprite is still a visible shape


def test_shapes_posx_moves_the_centroid_right_and_posy_down() -> None:
    cols = [np.argwhere(_one(1, 0.8, 0.0, px, 0.5))[:, 1].mean() for px in (0.0, 0.5, 1.0)]
    rows = [np.argwhere(_one(1, 0.8, 0.0, 0.5, py))[:, 0].mean() for py in (0.0, 0.5, 1.0)]
    assert cols[0] < cols[1] < cols[2] and cols[2] - cols[0] > 20
    assert rows[0] < rows[1] < rows[2] and rows[2] - rows[0] > 20


def test_shapes_orientation_rotates_ellipse_and_heart() -> None:
    for shape in (1, 2):
        a, b = _one(shape, 1.0, 0.0, 0.5, 0.5), _one(shape, 1.0, math.pi / 2, 0.5, 0.5)
        assert (a != b).sum() > 20


def test_shapes_all_lie_inside_the_frame() -> None:
    # the extreme positions at the largest scale, every shape and orientation, plus a random sample
    grid = [(s, 1.0, a, px, py) for s in range(3) for a in FACTOR_VALUES[2] for px in (0, 1) for py in (0, 1)]
    imgs = [_one(*g, size=32) for g in grid] + list(make_shapes(1000, size=32, seed=1)[0][:, 0].numpy())
    for img in imgs:
        assert img.sum() > 0
        assert not img[0].any() and not img[-1].any() and not img[:, 0].any() and not img[:, -1].any()


def test_build_data_shapes_splits_the_same_samples_make_shapes_renders() -> None:
    b = build_data(DataConfig(source="shapes", num_samples=200, image_size=32, val_fraction=0.25), seed=7)
    x, f = make_shapes(200, size=32, seed=7)
    tr, va = split_indices(200, 0.25, 7)
    assert torch.equal(b.train.x, x[tr]) and torch.equal(b.val.y, f[va])
    assert (b.info.n_train, b.info.n_val, b.info.shape, b.info.modality) == (150, 50, (1, 32, 32), "image")
    assert b.info.description.startswith("shapes: 150 train / 50 val, (1, 32, 32)")


# ------------------------------------------------------------------------------------------- mnist
def _write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> None:
    header = (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_mnist_reads_idx_gz_files(mnist_dir: Path) -> None:
    b = build_data(DataConfig(source="mnist", path=str(mnist_dir)), seed=0)
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz", 3)
    # the official t10k files are the test split; a seeded val_fraction of train is the validation split
    assert b.train.x.shape == (10, 1, 28, 28) and b.val.x.shape == (2, 1, 28, 28) and b.test.x.shape == (5, 1, 28, 28)
    assert torch.allclose(b.test.x[:, 0], torch.from_numpy(raw.astype(np.float32)) / 255)
    labels = sorted(b.train.y.tolist() + b.val.y.tolist())
    assert b.train.y.dtype == torch.int64 and labels == sorted(i % 10 for i in range(12))
    assert (b.info.n_train, b.info.n_val, b.info.n_test, b.info.factor_names) == (10, 2, 5, ["digit"])


def test_mnist_accepts_uncompressed_files_and_resizes(mnist_dir: Path) -> None:
    for p in mnist_dir.glob("t10k-*.gz"):
        p.with_suffix("").write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()
    b = build_data(DataConfig(source="mnist", path=str(mnist_dir), image_size=16, num_samples=4), seed=0)
    assert b.train.x.shape == (3, 1, 16, 16) and b.val.x.shape == (1, 1, 16, 16) and b.test.x.shape == (4, 1, 16, 16)
    assert 0.0 <= float(b.train.x.min()) and float(b.train.x.max()) <= 1.0


def test_mnist_truncated_file_raises_data_error_naming_it(mnist_dir: Path) -> None:
    bad = mnist_dir / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-40])  # truncated gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        build_data(DataConfig(source="mnist", path=str(mnist_dir)), seed=0)
    _write_idx(bad, np.zeros((12, 28, 28)))
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[:-100]))  # valid gzip, short payload
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz.*expected"):
        build_data(DataConfig(source="mnist", path=str(mnist_dir)), seed=0)


def test_mnist_wrong_magic_or_missing_file_raises(mnist_dir: Path) -> None:
    _write_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", np.zeros((5, 2)))  # 2-d where 1-d is expected
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: magic number"):
        build_data(DataConfig(source="mnist", path=str(mnist_dir)), seed=0)
    (mnist_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: not found"):
        build_data(DataConfig(source="mnist", path=str(mnist_dir)), seed=0)
    with pytest.raises(ValueError, match="data.path: required for data.source=mnist"):
        build_data(DataConfig(source="mnist"), seed=0)


# ------------------------------------------------------------------------------------ image folder
@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / f"a{i}.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "sub" / "b.JPG")
    Image.fromarray(rng.integers(0, 256, (40, 18, 3), dtype=np.uint8)).save(root / "sub" / "c.jpeg")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "sub" / "gray.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _folder_cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(
        **{"source": "image_folder", "path": str(root), "image_size": 16, "val_fraction": 0.25, **kw}
    )


@pytest.mark.parametrize("in_memory", ["always", "never"])
def test_image_folder_scans_recursively_and_decodes_to_size(image_dir: Path, in_memory: str) -> None:
    b = build_data(_folder_cfg(image_dir, in_memory=in_memory), seed=0)
    assert (b.info.n_train, b.info.n_val, b.info.shape, b.info.skipped) == (5, 2, (3, 16, 16), 0)
    assert isinstance(b.train, ArraySource if in_memory == "always" else FileSource)
    x = b.train[0]["x"]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    gray = build_data(_folder_cfg(image_dir, in_memory=in_memory, channels=1), seed=0)
    assert gray.train[0]["x"].shape == (1, 16, 16)


def test_image_folder_in_memory_and_streaming_give_the_same_samples(image_dir: Path) -> None:
    mem = build_data(_folder_cfg(image_dir, in_memory="always"), seed=1)
    stream = build_data(_folder_cfg(image_dir, in_memory="never"), seed=1)
    for a, b in ((mem.train, stream.train), (mem.val, stream.val)):
        assert torch.equal(a.x, torch.stack([b[i]["x"] for i in range(len(b))]))


def test_image_folder_corrupt_file_raises_naming_it_or_is_skipped_and_counted(
    image_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (image_dir / "sub" / "broken.png").write_bytes(b"\x89PNG not really a png")
    with pytest.raises(DataError, match="broken.png"):
        build_data(_folder_cfg(image_dir), seed=0)
    with caplog.at_level(logging.WARNING, logger="vaekit.data.images"):
        b = build_data(_folder_cfg(image_dir, on_error="skip"), seed=0)
    assert b.info.skipped == 1 and b.info.n_train + b.info.n_val == 7
    assert "broken.png" in caplog.text


def test_image_folder_truncated_file_found_at_decode_in_memory(image_dir: Path) -> None:
    good = (image_dir / "a0.png").read_bytes()
    (image_dir / "cut.png").write_bytes(good[: len(good) // 2])  # header opens, pixels do not decode
    with pytest.raises(DataError, match="cut.png"):
        build_data(_folder_cfg(image_dir, in_memory="always", val_fraction=0.0), seed=0)
    b = build_data(_folder_cfg(image_dir, in_memory="always", on_error="skip"), seed=0)
    assert b.info.skipped == 1 and b.info.n_train + b.info.n_val == 7


@pytest.mark.parametrize("in_memory", ["never", "always"])
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_image_gets_the_same_answer_streaming_or_in_memory(
    image_dir: Path, caplog: pytest.LogCaptureFixture, in_memory: str, fmt: str
) -> None:
    from PIL import Image

    bad = image_dir / f"a00.{fmt}"  # sorts right after a0.png
    Image.open(image_dir / "a0.png").convert("RGB").save(bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # the header still opens; the pixels do not
    cfg = _folder_cfg(image_dir, in_memory=in_memory, val_fraction=0.0)
    with pytest.raises(DataError, match=f"a00.{fmt}: cannot decode image") as err:
        build_data(cfg, seed=0)
    assert "\n" not in str(err.value) and "data.on_error=skip" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="vaekit.data.common"):
        b = build_data(cfg.model_copy(update={"on_error": "skip"}), seed=0)
    assert b.info.skipped == 1 and "1 skipped" in b.info.description and f"a00.{fmt}" in caplog.text
    assert len(b.train) == 7  # every readable image of the fixture


def test_image_broken_after_the_build_fails_at_load_or_is_replaced_when_skipping(
    image_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _folder_cfg(image_dir, in_memory="never", val_fraction=0.0)
    src = build_data(cfg, seed=0).train
    skipping = build_data(cfg.model_copy(update={"on_error": "skip"}), seed=0).train
    good = (image_dir / "a0.png").read_bytes()
    (image_dir / "a0.png").write_bytes(good[: len(good) // 2])
    bad = [p.name for p in src.paths].index("a0.png")
    with pytest.raises(DataError, match="a0.png"):
        src[bad]
    with caplog.at_level(logging.WARNING, logger="vaekit.data.images"):
        assert torch.equal(skipping[bad]["x"], skipping[bad + 1]["x"])  # the next readable image stands in
    assert "a0.png" in caplog.text


def test_image_folder_honours_data_split_and_one_image_file_is_validation_data(image_dir: Path) -> None:
    b = build_data(_folder_cfg(image_dir, split=[0.5, 0.25, 0.25]), seed=0)
    n = 7
    assert b.test is not None and len(b.train) + len(b.val) + len(b.test) == n and len(b.test) >= 1
    one = build_data(_folder_cfg(image_dir / "a0.png"), seed=0)
    assert (len(one.train), len(one.val), one.test) == (0, 1, None)


def test_image_folder_random_augmentation_is_seeded_per_epoch_and_index(image_dir: Path) -> None:
    cfg = _folder_cfg(image_dir, crop="random", flip=True, image_size=12)
    b = build_data(cfg, seed=0)
    assert isinstance(b.train, FileSource)
    src = b.train
    e0 = torch.stack([src[i]["x"] for i in range(len(src))])
    assert torch.equal(e0, torch.stack([src[i]["x"] for i in range(len(src))]))
    src.set_epoch(1)
    assert not torch.equal(e0, torch.stack([src[i]["x"] for i in range(len(src))]))
    val = b.val  # validation: never augmented
    assert torch.equal(val[0]["x"], (val.set_epoch(5), val[0]["x"])[1])
    with pytest.raises(ValueError, match="data.in_memory=always"):
        build_data(cfg.model_copy(update={"in_memory": "always"}), seed=0)


# ------------------------------------------------------------------------------------------ loader
def _collect(loader: BatchLoader, start: int = 0) -> list[torch.Tensor]:
    return [batch["x"][:, 0].long() for batch in loader.iter_from(start)]


def _index_source(n: int) -> ArraySource:
    return ArraySource(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def test_loader_yields_every_sample_once_per_epoch_and_reshuffles() -> None:
    loader = BatchLoader(_index_source(103), 10, shuffle=True, drop_last=False, seed=0)
    assert len(loader) == 11
    e0 = torch.cat(_collect(loader))
    assert sorted(e0.tolist()) == list(range(103))
    loader.set_epoch(1)
    e1 = torch.cat(_collect(loader))
    assert sorted(e1.tolist()) == list(range(103)) and not torch.equal(e0, e1)
    loader.set_epoch(0)
    assert torch.equal(torch.cat(_collect(loader)), e0)
    dropped = BatchLoader(_index_source(103), 10, shuffle=False, drop_last=True, seed=0)
    assert len(dropped) == 10 and torch.equal(torch.cat(_collect(dropped)), torch.arange(100))


@pytest.mark.parametrize("drop_last", [True, False])
def test_loader_rank_slices_concatenate_to_the_single_process_batch(drop_last: bool) -> None:
    src = _index_source(45)
    single = BatchLoader(src, 8, shuffle=True, drop_last=drop_last, seed=3)
    ranks = [
        BatchLoader(src, 8, shuffle=True, drop_last=drop_last, seed=3, rank=r, world_size=4) for r in range(4)
    ]
    per_rank = [_collect(r) for r in ranks]
    assert all(len(p) == len(single) for p in per_rank)
    for b, full in enumerate(_collect(single)):
        assert torch.equal(torch.cat([p[b] for p in per_rank]), full)
    if not drop_last:  # 45 = 5·8 + 5: the last batch splits 2/1/1/1
        assert [len(p[-1]) for p in per_rank] == [2, 1, 1, 1]


def test_loader_iter_from_resumes_exactly_mid_epoch() -> None:
    loader = BatchLoader(_index_source(50), 6, shuffle=True, drop_last=False, seed=1, rank=1, world_size=2)
    loader.set_epoch(2)
    full = _collect(loader)
    for k in (0, 3, len(loader)):
        tail = _collect(loader, k)
        assert len(tail) == len(full) - k and all(
            torch.equal(a, b) for a, b in zip(tail, full[k:], strict=True)
        )


def test_loader_rejects_a_batch_not_divisible_by_the_world_size() -> None:
    with pytest.raises(ValueError, match=r"train.batch_size=10.*world size 4"):
        BatchLoader(_index_source(20), 10, shuffle=False, drop_last=True, seed=0, world_size=4)


class _NoisySource(FileSource):
    """Returns its index and a draw from its per-sample generator (augmentation stand-in)."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(seed=seed, augment=True)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        noise = torch.rand(3, generator=self.generator(i))
        return {"x": torch.cat([torch.tensor([float(i)]), noise])}


def test_loader_file_source_order_and_augmentation_do_not_depend_on_workers() -> None:
    runs = []
    for workers in (0, 2):
        loader = BatchLoader(
            _NoisySource(37, seed=5),
            8,
            shuffle=True,
            drop_last=False,
            seed=2,
            rank=1,
            world_size=2,
            num_workers=workers,
        )
        loader.set_epoch(3)
        runs.append([b["x"] for b in loader.iter_from(1)])
    assert len(runs[0]) == len(runs[1]) == 4
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert runs[0][-1].shape == (2, 4)  # 37 = 4·8 + 5: rank 1 gets 2 of the last 5
    ref = BatchLoader(_index_source(37), 8, shuffle=True, drop_last=False, seed=2, rank=1, world_size=2)
    ref.set_epoch(3)
    assert all(torch.equal(a[:, 0].long(), b) for a, b in zip(runs[0], _collect(ref, 1), strict=True))


def test_loader_file_source_yields_empty_batch_for_a_rank_without_samples() -> None:
    loaders = [
        BatchLoader(_NoisySource(9, seed=0), 8, shuffle=False, drop_last=False, seed=0, rank=r, world_size=4)
        for r in range(4)
    ]
    last = [list(ld)[-1]["x"] for ld in loaders]
    assert [len(x) for x in last] == [1, 0, 0, 0] and last[1].shape == (0, 4)


def test_split_indices_is_a_seeded_disjoint_cover() -> None:
    tr, va = split_indices(100, 0.1, seed=0)
    assert len(va) == 10 and sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    assert torch.equal(va, split_indices(100, 0.1, seed=0)[1]) and not torch.equal(
        va, split_indices(100, 0.1, 1)[1]
    )
    assert len(split_indices(5, 0.0, 0)[1]) == 0


# ------------------------------------------------------------------------------------------- video
def test_moving_shapes_have_the_clip_shape_and_move_with_their_velocity() -> None:
    x, y = make_moving_shapes(40, frames=6, size=32, seed=0)
    assert x.shape == (40, 1, 6, 32, 32) and y.shape == (40, 7)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x, make_moving_shapes(40, frames=6, size=32, seed=0)[0])
    t = np.arange(6, dtype=np.float32)
    for clip, f in zip(x[:, 0].numpy(), y.numpy(), strict=True):
        assert all(frame.sum() > 0 and not frame[0].any() and not frame[:, -1].any() for frame in clip)
        if f[0] == 2:  # hearts are not symmetric about their centre
            continue
        pos = bounce(f[None, 3:5] + f[None, 5:7] * t[:, None])  # (T, 2)
        expected = np.stack([positions(pos[:, 0], 32), positions(pos[:, 1], 32)], axis=1) * 32 - 0.5
        centroid = np.stack([np.argwhere(fr).mean(0)[::-1] for fr in clip])  # (T, 2) as (x, y)
        assert np.abs(centroid - expected).max() < 0.75


def test_build_data_moving_shapes_uses_frames_and_size() -> None:
    b = build_data(DataConfig(source="moving_shapes", num_samples=20, frames=4, image_size=16), seed=0)
    assert (
        b.info.modality == "video"
        and b.info.shape == (1, 4, 16, 16)
        and b.train.x.shape[1:] == (1, 4, 16, 16)
    )
    assert b.info.factor_names is not None and len(b.info.factor_names) == b.train.y.shape[1] == 7


def _write_video(path: Path, frames: int = 12, size: int = 32) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((size, size, 3), 20 * i, dtype=np.uint8), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_read_video_clips_splits_a_video_into_clips(tmp_path: Path) -> None:
    path = tmp_path / "tiny.mp4"
    _write_video(path)
    clips = read_video_clips(path, frames=4, size=16)
    assert clips.shape == (3, 3, 4, 16, 16) and clips.dtype == torch.float32
    brightness = clips.mean(dim=(1, 3, 4)).flatten()  # frame order preserved: brighter every frame
    assert (brightness.diff() > 0.03).all()
    assert read_video_clips(path, frames=5, channels=1, max_clips=1).shape == (1, 1, 5, 32, 32)
    assert read_video_clips(path, frames=20).shape[0] == 0


def test_read_video_clips_corrupt_file_raises_data_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match="broken.mp4"):
        read_video_clips(bad, frames=4)


# ----------------------------------------------------------------------------------------- tensors
def test_from_arrays_infers_modality_and_scales_uint8() -> None:
    for shape, modality in (((20, 7), "tabular"), ((20, 1, 50), "audio"), ((20, 3, 8, 8), "image")):
        b = from_arrays(torch.rand(shape), val_fraction=0.2, seed=0)
        assert (b.info.modality, b.info.shape, b.info.n_train, b.info.n_val) == (modality, shape[1:], 16, 4)
    b = from_arrays(
        np.full((10, 1, 2, 4, 4), 255, dtype=np.uint8),
        np.arange(10),
        val_x=np.zeros((3, 1, 2, 4, 4)),
        val_y=np.ones(3),
    )
    assert b.info.modality == "video" and float(b.train.x.max()) == 1.0 and len(b.val) == 3
    assert b.info.factor_names == ["label"]
    with pytest.raises(ValueError, match=r"x: image values must lie in \[0.0, 1.0\]"):
        from_arrays(torch.full((4, 1, 2, 2), 3.0))
    with pytest.raises(ValueError, match="x: expected 2-5 dims"):
        from_arrays(torch.zeros(4))


def test_build_data_tensor_source_needs_arrays() -> None:
    with pytest.raises(ValueError, match="data.source=tensor"):
        build_data(DataConfig(source="tensor"), seed=0)
    b = build_data(DataConfig(source="tensor", num_samples=10), seed=0, arrays={"x": torch.rand(30, 5)})
    assert b.info.n_train + b.info.n_val == 10


def test_arrays_with_nan_are_refused_naming_the_argument() -> None:
    x = torch.rand(10, 4)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x: contains NaN"):
        from_arrays(x)
