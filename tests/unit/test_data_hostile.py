"""Hostile and newcomer inputs to the file sources (issue 19): truncated or non-finite audio, many-channel WAVs,
complex arrays, duplicate column names, and the table conveniences (gzip, column ranges/patterns, a separate
test file, pixel columns as images, an evaluation-only split). Every file is really written and decoded."""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vaekit.config.schema import DataConfig
from vaekit.data import build_data
from vaekit.errors import ConfigError, DataError


def _audio_cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(**{"source": "audio_folder", "path": str(root), "segment": 0.05, "val_fraction": 0.0, **kw})


def _write_waves(root: Path, n: int = 3, channels: int = 1, subtype: str = "PCM_16") -> None:
    root.mkdir(parents=True, exist_ok=True)
    t = np.linspace(0, 1, 1600, dtype=np.float32)
    for i in range(n):
        wave = 0.5 * np.sin(2 * np.pi * (100 + 50 * i) * t)[:, None].repeat(channels, axis=1)
        sf.write(root / f"w{i}.wav", wave, 1600, subtype=subtype)


# ------------------------------------------------------------------------------------------ audio
def test_truncated_wav_is_refused_naming_it_or_skipped_and_counted(tmp_path: Path) -> None:
    _write_waves(tmp_path / "a")
    bad = tmp_path / "a" / "w1.wav"
    bad.write_bytes(bad.read_bytes()[:1000])  # the header still says 1600 frames
    with pytest.raises(DataError, match=r"w1.wav: truncated: the header declares 1600 frames") as err:
        build_data(_audio_cfg(tmp_path / "a"), seed=0)
    assert "\n" not in str(err.value)
    b = build_data(_audio_cfg(tmp_path / "a", on_error="skip"), seed=0)
    assert b.info.skipped == 1 and len(b.train) == 2


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_float_wav_with_nan_or_inf_samples_is_refused_or_skipped(tmp_path: Path, value: float) -> None:
    _write_waves(tmp_path / "a", subtype="FLOAT")
    wave, rate = sf.read(tmp_path / "a" / "w2.wav", dtype="float32")
    wave[700] = value
    sf.write(tmp_path / "a" / "w2.wav", wave, rate, subtype="FLOAT")
    with pytest.raises(DataError, match=r"w2.wav: NaN or Inf samples \(the first at frame 700\)"):
        build_data(_audio_cfg(tmp_path / "a"), seed=0)
    b = build_data(_audio_cfg(tmp_path / "a", on_error="skip"), seed=0)
    assert b.info.skipped == 1 and all(torch.isfinite(b.train[i]["x"]).all() for i in range(len(b.train)))


def test_six_channel_wav_mix_down_is_said_once_naming_data_channels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_waves(tmp_path / "a", n=2, channels=6)
    with caplog.at_level(logging.WARNING, logger="vaekit.data.audio"):
        b = build_data(_audio_cfg(tmp_path / "a"), seed=0)
    lines = [r.getMessage() for r in caplog.records if "more than 2 channels" in r.getMessage()]
    assert len(lines) == 1 and "mixed down to mono" in lines[0] and "data.channels" in lines[0]
    assert b.info.shape[0] == 1 and b.info.meta["source_channels"] == [6]
    caplog.clear()
    _write_waves(tmp_path / "b", n=2, channels=2)  # stereo mixed to mono is the documented default: no word
    with caplog.at_level(logging.WARNING, logger="vaekit.data.audio"):
        build_data(_audio_cfg(tmp_path / "b"), seed=0)
    assert "more than 2 channels" not in caplog.text


# ------------------------------------------------------------------------------------------ tables
def _table_cfg(path: Path, **kw: object) -> DataConfig:
    return DataConfig(**{"source": "table", "path": str(path), "val_fraction": 0.25, **kw})


def test_complex_npy_table_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.ones((8, 3), dtype=np.complex64) * (1 + 2j))
    with pytest.raises(DataError, match=r"c.npy: complex values \(dtype complex64\)"):
        build_data(_table_cfg(tmp_path / "c.npy"), seed=0)


def test_duplicate_csv_column_names_are_refused_naming_them(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,a,c\n" + "\n".join("1,2,3,4" for _ in range(6)) + "\n")
    with pytest.raises(DataError, match=r"d.csv: duplicate column names \('a' at columns 0, 2\)"):
        build_data(_table_cfg(tmp_path / "d.csv"), seed=0)


def test_non_finite_values_are_refused_in_tables_npy_and_record_counts(tmp_path: Path) -> None:
    x = np.ones((8, 3))
    x[5, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"x.npy: row 6, column '1': infinite value"):
        build_data(_table_cfg(tmp_path / "x.npy"), seed=0)
    (tmp_path / "r.csv").write_text("event,item,n\ne1,a,2\ne1,b,nan\ne2,a,1\n")
    cfg = DataConfig(source="records", path=str(tmp_path / "r.csv"), event_column="event", item_column="item",
                     count_column="n", values="count")
    with pytest.raises(DataError, match=r"r.csv: line 3, column 'n': 'nan' is not a finite count"):
        build_data(cfg, seed=0)


def test_gzipped_csv_and_tsv_are_read_directly(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i * 2},{i % 3}" for i in range(10))
    plain = build_data(_table_cfg(_write(tmp_path / "t.csv", "a,b,c\n" + rows)), seed=0)
    with gzip.open(tmp_path / "t.csv.gz", "wt") as fh:
        fh.write("a,b,c\n" + rows + "\n")
    with gzip.open(tmp_path / "t.tsv.gz", "wt") as fh:
        fh.write("a\tb\tc\n" + rows.replace(",", "\t") + "\n")
    for name in ("t.csv.gz", "t.tsv.gz"):
        b = build_data(_table_cfg(tmp_path / name), seed=0)
        assert b.info.meta["columns"] == ["a", "b", "c"] and torch.equal(b.train.x, plain.train.x)
    (tmp_path / "bad.csv.gz").write_bytes(gzip.compress(b"a,b\n1,2\n" * 50)[:30])
    with pytest.raises(DataError, match="bad.csv.gz: cannot"):
        build_data(_table_cfg(tmp_path / "bad.csv.gz"), seed=0)


def _write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def test_column_ranges_globs_and_regexes_select_columns(tmp_path: Path) -> None:
    names = ["id", "f0", "f1", "f2", "label_a", "label_b"]
    body = "\n".join(",".join(str(r * 10 + c) for c in range(6)) for r in range(8))
    path = _write(tmp_path / "t.csv", ",".join(names) + "\n" + body)

    def cols(spec: object) -> list[str]:
        return build_data(_table_cfg(path, columns=spec), seed=0).info.meta["columns"]

    assert cols("1:4") == ["f0", "f1", "f2"]
    assert cols(["label_*"]) == ["label_a", "label_b"]
    assert cols(["re:f[02]"]) == ["f0", "f2"]
    assert cols([":-2", "label_b"]) == ["id", "f0", "f1", "f2", "label_b"]
    assert cols(["f*", 1]) == ["f0", "f1", "f2"]  # a column selected twice is kept once
    with pytest.raises(ConfigError, match=r"data.columns: 'x_\*' matches no column; the columns are: id, f0"):
        cols(["x_*"])
    with pytest.raises(ConfigError, match=r"data.columns: range '9:' selects no column"):
        cols("9:")


def test_test_path_is_the_test_split_normalised_with_training_statistics(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.csv", "a,b\n" + "\n".join(f"{i},{2 * i}" for i in range(10)))
    test = _write(tmp_path / "test.csv", "b,a\n100,50\n0,0")  # columns found by name
    b = build_data(_table_cfg(train, test_path=str(test), normalize="minmax"), seed=0)
    assert b.test is not None and len(b.test) == 2 and b.info.n_test == 2
    lo, hi = np.array(b.info.meta["min"]), np.array(b.info.meta["max"])
    assert torch.allclose(b.test.x[0], torch.tensor((np.array([50, 100]) - lo) / (hi - lo), dtype=torch.float32))
    assert len(b.train) + len(b.val) == 10 and b.info.meta["test_file"] == str(test)
    with pytest.raises(ConfigError, match="data.test_path: the test split is that file"):
        build_data(_table_cfg(train, test_path=str(test), split=[0.6, 0.2, 0.2]), seed=0)
    _write(tmp_path / "bad.csv", "a,c\n1,2")
    with pytest.raises(DataError, match=r"bad.csv: data.test_path has no column\(s\) b of data.path train.csv"):
        build_data(_table_cfg(train, test_path=str(tmp_path / "bad.csv")), seed=0)


def test_split_with_zero_train_share_puts_everything_in_validation_and_test(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "a,b\n" + "\n".join(f"{i},{i}" for i in range(10)))
    b = build_data(_table_cfg(path, split=[0.0, 0.0, 1.0]), seed=0)
    assert (len(b.train), len(b.val), len(b.test)) == (0, 0, 10)
    b = build_data(_table_cfg(path, split=[0.0, 0.3, 0.7]), seed=0)
    assert (len(b.train), len(b.val), len(b.test)) == (0, 3, 7)
    with pytest.raises(ConfigError, match="data.normalize=standard: needs training rows"):
        build_data(_table_cfg(path, split=[0.0, 0.0, 1.0], normalize="standard"), seed=0)


def _digits_csv(path: Path, n: int = 40) -> Path:
    """The sklearn digits layout: a label column, then 64 pixel columns with values 0-16."""
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 17, size=(n, 64))
    names = ["target", *(f"pixel_{r}_{c}" for r in range(8) for c in range(8))]
    body = "\n".join(",".join(map(str, [i % 10, *row])) for i, row in enumerate(pix))
    return _write(path, ",".join(names) + "\n" + body)


def test_pixel_column_csv_reshapes_into_images_with_the_scaling_stated(tmp_path: Path) -> None:
    path = _digits_csv(tmp_path / "digits.csv")
    b = build_data(_table_cfg(path, columns=["pixel_*"], shape=[1, 8, 8], scale=16), seed=0)
    assert b.info.modality == "image" and b.info.shape == (1, 8, 8) and b.train.x.shape[1:] == (1, 8, 8)
    assert float(b.train.x.max()) <= 1.0 and b.info.meta["scale"] == 16 and "likelihood" not in b.info.meta
    assert "scaled by 1/16" in b.info.description
    with pytest.raises(ConfigError, match=r"data.shape: images need values in \[0, 1\].*set data.scale=16"):
        build_data(_table_cfg(path, columns="1:", shape=[8, 8]), seed=0)
    with pytest.raises(ConfigError, match=r"data.shape: \[1, 8, 8\] holds 64 values per row, but 65 columns"):
        build_data(_table_cfg(path, shape=[1, 8, 8], scale=16), seed=0)

