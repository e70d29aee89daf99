"""The webdataset and hf sources: decoding as the folder sources do, bad input in one line, training from an hf
dataset saved to disk and from a Parquet file (images and a tag-list column)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.config.load import load_config
from vaekit.data import build_data
from vaekit.data.images import load_image, resize_and_crop, to_tensor
from vaekit.data.pack import shard
from vaekit.errors import ConfigError, DataError


def png_bytes(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def data_of(*overrides: str):
    return build_data(load_config(None, list(overrides)).data, 0)


def test_webdataset_decodes_an_image_member_as_the_image_folder_does(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    shard(str(folder), str(tmp_path / "wds"), 4)
    b = data_of("data.source=webdataset", f"data.path={tmp_path}/wds/shard-{{000000..000001}}.tar",
                "data.image_size=16", "data.val_fraction=0")
    assert b.info.n_train == 6 and b.info.shape == (3, 16, 16)
    for i in range(6):
        expected = to_tensor(resize_and_crop(load_image(folder / f"{i}.png", 3), 16))
        assert torch.equal(b.train[i]["x"], expected)


def test_webdataset_pattern_matching_nothing_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no shard matches") as err:
        data_of("data.source=webdataset", f"data.path={tmp_path}/none-{{000..003}}.tar")
    assert "\n" not in str(err.value)


def test_truncated_shard_is_named_or_skipped_and_counted(tmp_path: Path) -> None:
    good = write_tar(tmp_path / "a-0.tar", {f"{i:03d}.png": png_bytes(i) for i in range(4)})
    bad = write_tar(tmp_path / "a-1.tar", {f"{i:03d}.png": png_bytes(i) for i in range(4, 8)})
    bad.write_bytes(bad.read_bytes()[: 2 * 512 + 2 * len(png_bytes(4))])  # cut inside the second member
    assert good.is_file()
    with pytest.raises(DataError, match=r"a-1\.tar: truncated") as err:
        data_of("data.source=webdataset", f"data.path={tmp_path}/a-{{0..1}}.tar")
    assert "\n" not in str(err.value)
    b = data_of("data.source=webdataset", f"data.path={tmp_path}/a-{{0..1}}.tar", "data.on_error=skip",
                "data.val_fraction=0")
    assert b.info.skipped == 1 and b.info.n_train == 5  # 4 + the complete first sample of the cut shard


def test_member_that_does_not_decode_is_named_or_replaced(tmp_path: Path) -> None:
    write_tar(tmp_path / "s.tar", {"000.png": png_bytes(0), "001.png": b"not a png", "002.png": png_bytes(2)})
    b = data_of("data.source=webdataset", f"data.path={tmp_path}/s.tar", "data.val_fraction=0")
    with pytest.raises(DataError, match=r"s\.tar:001\.png: cannot decode"):
        b.train[1]
    b = data_of("data.source=webdataset", f"data.path={tmp_path}/s.tar", "data.val_fraction=0", "data.on_error=skip")
    assert torch.equal(b.train[1]["x"], b.train[2]["x"])


def test_webdataset_reads_npy_and_y_npy_written_from_a_config(tmp_path: Path) -> None:
    cfg = tmp_path / "shapes.yaml"
    cfg.write_text("data: {source: shapes, num_samples: 30, image_size: 16}\n")
    shard(str(cfg), str(tmp_path / "wds"), 10)
    b = data_of("data.source=webdataset", f"data.path={tmp_path}/wds", "data.image_size=16")
    assert b.info.n_train + b.info.n_val == 30
    assert b.info.factor_names is not None and b.train[0]["y"].dtype == torch.float32


def test_shard_refuses_a_folder_holding_files(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        shard(str(tmp_path), str(tmp_path / "out"), 4)


# ------------------------------------------------------------------------------------------------ hf
def hf_rows(n: int = 24) -> dict[str, list]:
    tags = [["rock", "loud"], ["jazz"], ["rock", "calm"], ["jazz", "calm"]]
    return {"image": [{"bytes": png_bytes(i), "path": None} for i in range(n)],
            "aspect_list": [str(tags[i % 4]) for i in range(n)],  # MusicCaps stores Python-literal strings
            "tags": [tags[i % 4] for i in range(n)],
            "label": [i % 3 for i in range(n)], "tempo": [float(i) for i in range(n)]}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "aspect_list": datasets.Value("string"),
                                  "tags": datasets.Sequence(datasets.Value("string")),
                                  "label": datasets.ClassLabel(names=["a", "b", "c"]), "tempo": datasets.Value("float32")})
    ds = datasets.Dataset.from_dict(hf_rows(), features=features)
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(4))}).save_to_disk(str(tmp_path / "disk"))
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    return tmp_path


def test_hf_save_to_disk_images_with_labels_train(saved: Path, tiny) -> None:
    b = data_of("data.source=hf", f"data.path={saved}/disk", "data.hf.image_column=image",
                "data.hf.label_column=label", "data.hf.val_split=validation", "data.image_size=16")
    assert (b.info.n_train, b.info.n_val, b.info.shape) == (24, 4, (3, 16, 16))
    assert b.info.meta["classes"] == ["a", "b", "c"] and int(b.train[5]["y"]) == 2
    expected = to_tensor(resize_and_crop(Image.open(io.BytesIO(png_bytes(5))).convert("RGB"), 16))
    assert torch.equal(b.train[5]["x"], expected)
    data = {"source": "hf", "path": str(saved / "disk"), "image_size": 16,
            "hf": {"image_column": "image", "tags_column": "tags", "val_split": "validation"}}
    result = vaekit.train(tiny("hfdisk", data=data, train={"max_steps": 2, "batch_size": 4}))
    assert (result.run_dir / "model.safetensors").is_file()


def test_hf_parquet_tag_list_column_trains_as_multi_hot(saved: Path, tiny) -> None:
    b = data_of("data.source=hf", f"data.path={saved}/rows.parquet", "data.hf.tags_column=aspect_list")
    vocab = b.info.meta["vocabulary"]
    assert sorted(vocab) == ["calm", "jazz", "loud", "rock"] and b.info.meta["likelihood"] == "bce"
    x = b.train.x
    assert x.shape[1] == 4 and set(x.unique().tolist()) == {0.0, 1.0} and (x.sum(1) >= 1).all()
    data = {"source": "hf", "path": str(saved / "rows.parquet"), "hf": {"tags_column": "aspect_list"}}
    result = vaekit.train(tiny("hfparquet", data=data, model={"arch": "mlp", "hidden_dims": [8]},
                               train={"max_steps": 2, "batch_size": 4}))
    assert (result.run_dir / "model.safetensors").is_file()
    b = data_of("data.source=hf", f"data.path={saved}/rows.parquet", "data.hf.image_column=image",
                "data.hf.numeric_columns=[tempo]", "data.image_size=8")
    assert b.train[0]["y"].shape == (1,)


def test_hf_bad_input_is_one_line(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no column 'img'; the columns are: image"):
        data_of("data.source=hf", f"data.path={saved}/rows.parquet", "data.hf.image_column=img")
    with pytest.raises(ConfigError, match="no split 'test'"):
        data_of("data.source=hf", f"data.path={saved}/disk", "data.hf.split=test", "data.hf.image_column=image")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load this hub dataset") as err:
        data_of("data.source=hf", "data.path=nobody-h16/no-such-dataset", "data.hf.tags_column=aspect_list")
    assert "\n" not in str(err.value) and "save_to_disk" in str(err.value)


def test_hf_streaming_reads_the_head_of_the_dataset(saved: Path) -> None:
    b = data_of("data.source=hf", f"data.path={saved}/rows.parquet", "data.hf.tags_column=tags",
                "data.hf.streaming=true", "data.num_samples=10", "data.val_fraction=0.2")
    assert (b.info.n_train, b.info.n_val) == (8, 2)
    with pytest.raises(ConfigError, match="data.num_samples: required"):
        data_of("data.source=hf", f"data.path={saved}/rows.parquet", "data.hf.tags_column=tags", "data.hf.streaming=true")


def test_musiccaps_example_config_trains_on_a_local_copy(tmp_path: Path) -> None:
    """examples/hf_musiccaps.yaml as given, pointed at a tiny CSV in MusicCaps' layout."""
    rows = ["ytid,start_s,end_s,aspect_list,caption"]
    tags = ["['low quality', 'rock']", "['jazz', 'calm']", "['rock', 'loud', 'male vocal']", "['jazz']"]
    rows += [f'id{i},0,10,"{tags[i % 4]}",a clip' for i in range(40)]
    (tmp_path / "musiccaps-public.csv").write_text("\n".join(rows) + "\n")
    example = Path(__file__).resolve().parents[2] / "examples" / "hf_musiccaps.yaml"
    cfg = load_config(str(example), [f"data.path={tmp_path}/musiccaps-public.csv", "data.min_count=2",
                                     f"run.dir={tmp_path}/runs", "train.epochs=1", "train.batch_size=8",
                                     "log.progress=false", "log.plots=false", "log.samples=false"])
    result = vaekit.train(cfg)
    meta = (result.run_dir / "data_meta.json").read_text()
    assert "low quality" in meta and "male vocal" in meta


def test_a_sample_without_the_first_samples_member_uses_its_own_of_the_same_kind(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(buf, format="JPEG")
    write_tar(tmp_path / "m.tar", {"000.png": png_bytes(0), "001.jpg": buf.getvalue()})
    b = data_of("data.source=webdataset", f"data.path={tmp_path}/m.tar", "data.val_fraction=0", "data.image_size=8")
    assert b.train[1]["x"].shape == (3, 8, 8)
    with pytest.raises(DataError, match="no png member"):
        data_of("data.source=webdataset", f"data.path={tmp_path}/m.tar", "data.val_fraction=0",
                "data.shards.member=png").train[1]


def test_hf_audio_column_is_read_as_audio_folder_segments(tmp_path: Path) -> None:
    import datasets
    import soundfile as sf

    rows = []
    for i in range(6):
        buf = io.BytesIO()
        sf.write(buf, np.sin(np.arange(8000) * (i + 1) / 50).astype(np.float32) * 0.5, 8000, format="WAV")
        rows.append({"audio": {"bytes": buf.getvalue(), "path": f"{i}.wav"}, "label": i % 2})
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    b = data_of("data.source=hf", f"data.path={tmp_path}/a.parquet", "data.hf.audio_column=audio",
                "data.hf.label_column=label", "data.segment=0.5", "data.val_fraction=0")
    assert b.info.modality == "audio" and b.info.shape == (1, 4000) and b.info.meta["sample_rate"] == 8000
    x = b.train[0]["x"]
    assert x.abs().max() <= 0.5 + 1e-4 and int(b.train[1]["y"]) == 1


def test_webdataset_audio_members_match_the_audio_folder(tmp_path: Path) -> None:
    import soundfile as sf

    folder = tmp_path / "wavs"
    folder.mkdir()
    for i in range(4):
        sf.write(folder / f"{i}_a.wav", np.sin(np.arange(6000) * (i + 1) / 30).astype(np.float32) * 0.5, 8000)
    shard(str(folder), str(tmp_path / "wds"), 2)
    common = ["data.segment=0.25", "data.val_fraction=0.25"]
    a = data_of("data.source=audio_folder", f"data.path={folder}", *common)
    b = data_of("data.source=webdataset", f"data.path={tmp_path}/wds", *common)
    assert a.info.shape == b.info.shape == (1, 2000)
    assert torch.equal(a.val[0]["x"], b.val[0]["x"])  # the same file, the same centre segment


def test_webdataset_reads_shards_through_fsspec_urls(tmp_path: Path) -> None:
    import fsspec

    local = write_tar(tmp_path / "u.tar", {f"{i:03d}.png": png_bytes(i) for i in range(3)})
    with fsspec.open("memory://h16-bucket/u-0.tar", "wb") as f:
        f.write(local.read_bytes())
    b = data_of("data.source=webdataset", "data.path=memory://h16-bucket/u-{0..0}.tar", "data.val_fraction=0",
                "data.image_size=8")
    a = data_of("data.source=webdataset", f"data.path={local}", "data.val_fraction=0", "data.image_size=8")
    assert len(b.train) == 3 and torch.equal(a.train[2]["x"], b.train[2]["x"])
