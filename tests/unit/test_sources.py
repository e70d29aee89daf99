"""File sources: audio folders, tables, tag lists, observation records, streamed video, and the 3-way split.

Every file is generated in ``tmp_path``; nothing here reads the shared data sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from vaekit.config.schema import DataConfig
from vaekit.data import BatchLoader, DataError, FileSource, build_data, split_indices, split_three
from vaekit.data.video import decode_frames
from vaekit.errors import ConfigError


# ------------------------------------------------------------------------------------------- splits
def test_split_three_is_a_seeded_disjoint_cover_matching_split_indices_without_test() -> None:
    tr, va, te = split_three(100, [0.8, 0.1, 0.1], 0.5, seed=3)
    assert (len(tr), len(va), len(te)) == (80, 10, 10)
    assert sorted(torch.cat([tr, va, te]).tolist()) == list(range(100))
    assert all(
        torch.equal(a, b)
        for a, b in zip((tr, va, te), split_three(100, [0.8, 0.1, 0.1], 0.5, 3), strict=True)
    )
    tr2, va2, te2 = split_three(100, [0.9, 0.1, 0.0], 0.5, seed=3)
    ref_tr, ref_va = split_indices(100, 0.1, seed=3)
    assert torch.equal(tr2, ref_tr) and torch.equal(va2, ref_va) and len(te2) == 0
    tr3, va3, te3 = split_three(100, None, 0.25, seed=3)
    assert (len(tr3), len(va3), len(te3)) == (75, 25, 0)


def test_split_must_be_three_fractions_summing_to_one() -> None:
    with pytest.raises(ValueError, match="split"):
        DataConfig(split=[0.5, 0.2, 0.2])
    with pytest.raises(ValueError, match="split"):
        DataConfig(split=[0.9, 0.1])


def test_shapes_fill_the_test_split_when_split_is_set() -> None:
    b = build_data(DataConfig(source="shapes", num_samples=50, image_size=16, split=[0.6, 0.2, 0.2]), seed=0)
    assert (b.info.n_train, b.info.n_val, b.info.n_test) == (30, 10, 10)
    assert b.test is not None and b.test.x.shape == (10, 1, 16, 16) and "10 test" in b.info.description
    assert build_data(DataConfig(source="shapes", num_samples=50, image_size=16), seed=0).test is None


def _write_idx(path: Path, arr: np.ndarray) -> None:
    import gzip

    arr = np.asarray(arr, dtype=np.uint8)
    header = (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.tobytes()))


def test_mnist_test_split_is_t10k_and_validation_a_seeded_fraction_of_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    b = build_data(DataConfig(source="mnist", path=str(tmp_path), val_fraction=0.25), seed=0)
    assert (b.info.n_train, b.info.n_val, b.info.n_test) == (15, 5, 5)
    assert b.test is not None and b.test.y.tolist() == [0, 1, 2, 3, 4]
    b2 = build_data(DataConfig(source="mnist", path=str(tmp_path), split=[0.6, 0.2, 0.2]), seed=0)
    assert (b2.info.n_train, b2.info.n_val, b2.info.n_test) == (15, 5, 5)  # val share 0.2 / 0.8 of train


# -------------------------------------------------------------------------------------------- audio
def _tone(n: int, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(n) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    root = tmp_path / "audio"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
    for i in range(4):
        sf.write(root / "cat" / f"{i % 2}_a_{i}.wav", _tone(1200 + 100 * i, 8000), 8000)
        sf.write(root / "dog" / f"{(i + 1) % 2}-b-{i}.flac", _tone(3000, 8000, 220.0, channels=2), 8000)
    return root


def test_audio_folder_streams_fixed_segments_with_labels_from_folders(audio_dir: Path) -> None:
    cfg = DataConfig(
        source="audio_folder", path=str(audio_dir), segment=0.25, labels="folder", val_fraction=0.25
    )
    b = build_data(cfg, seed=0)
    assert isinstance(b.train, FileSource) and b.info.modality == "audio" and b.info.shape == (1, 2000)
    assert (b.info.n_train, b.info.n_val) == (6, 2)
    assert b.info.meta["classes"] == ["cat", "dog"] and b.info.meta["sample_rate"] == 8000
    s = b.train[0]
    assert s["x"].shape == (1, 2000) and s["x"].dtype == torch.float32 and s["y"].dtype == torch.long
    assert float(s["x"].abs().max()) <= 1.0
    batch = next(iter(BatchLoader(b.train, 3, shuffle=True, drop_last=True, seed=0)))
    assert batch["x"].shape == (3, 1, 2000) and batch["y"].shape == (3,)


def test_audio_labels_from_filename_prefix_and_stereo(audio_dir: Path) -> None:
    cfg = DataConfig(
        source="audio_folder",
        path=str(audio_dir),
        segment=0.1,
        labels="filename_prefix",
        channels=2,
        val_fraction=0,
    )
    b = build_data(cfg, seed=0)
    assert b.info.meta["classes"] == ["0", "1"] and b.info.shape == (2, 800)
    x = b.train[len(b.train) - 1]["x"]  # a dog file: stereo kept; mono files are duplicated
    assert x.shape == (2, 800) and torch.allclose(x[0], x[1])


def test_audio_short_files_are_zero_padded_and_validation_is_centred(tmp_path: Path) -> None:
    sf.write(tmp_path / "short.wav", np.full(300, 0.25, dtype=np.float32), 8000)
    ramp = np.linspace(-0.9, 0.9, 4000).astype(np.float32)
    sf.write(tmp_path / "long.wav", ramp, 8000)
    b = build_data(DataConfig(source="audio_folder", path=str(tmp_path), segment=0.1, val_fraction=0), seed=0)
    short = b.train.files.index(next(f for f in b.train.files if f.path.name == "short.wav"))
    x = b.train[short]["x"][0]
    assert torch.allclose(x[:300], torch.full((300,), 0.25), atol=1e-4) and (x[300:] == 0).all()
    long_src = type(b.train)(b.train.files, None, 8000, 800, 1, random_crop=False)
    i = 1 - short
    centre = long_src[i]["x"][0]
    assert torch.allclose(centre, torch.from_numpy(ramp[1600:2400]), atol=1e-4)


def test_audio_random_crop_is_seeded_per_epoch_and_index(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.linspace(-0.9, 0.9, 8000).astype(np.float32), 8000)
    b = build_data(
        DataConfig(source="audio_folder", path=str(tmp_path), segment=0.05, val_fraction=0), seed=1
    )
    first = b.train[0]["x"]
    assert torch.equal(first, b.train[0]["x"])
    starts = set()
    for epoch in range(6):
        b.train.set_epoch(epoch)
        starts.add(round(float(b.train[0]["x"][0, 0]), 4))
    assert len(starts) > 1


def test_audio_is_resampled_to_the_configured_rate(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", _tone(8000, 8000, 500.0), 8000)
    b = build_data(
        DataConfig(source="audio_folder", path=str(tmp_path), sample_rate=16000, segment=0.5, val_fraction=0),
        seed=0,
    )
    x = b.train[0]["x"][0].numpy()
    assert x.shape == (8000,) and b.info.meta["source_sample_rates"] == [8000]
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 500.0) < 4.0  # the 500 Hz tone survives resampling


def test_audio_mixed_rates_need_sample_rate(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", _tone(800, 8000), 8000)
    sf.write(tmp_path / "b.wav", _tone(1600, 16000), 16000)
    with pytest.raises(ConfigError, match="data.sample_rate"):
        build_data(DataConfig(source="audio_folder", path=str(tmp_path)), seed=0)


def test_audio_corrupt_file_raises_naming_it_or_is_skipped_and_counted(audio_dir: Path) -> None:
    (audio_dir / "cat" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(64))
    with pytest.raises(DataError, match="broken.wav"):
        build_data(DataConfig(source="audio_folder", path=str(audio_dir)), seed=0)
    b = build_data(DataConfig(source="audio_folder", path=str(audio_dir), on_error="skip"), seed=0)
    assert b.info.skipped == 1 and b.info.n_train + b.info.n_val == 8


# -------------------------------------------------------------------------------------------- table
def test_table_csv_with_header_selects_columns_drops_id_and_normalises_on_train_only(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = ["id,a,b,name"] + [f"{i},{i},{2 * i + 1},x{i}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(
        source="table",
        path=str(path),
        columns=["id", "a", "b"],
        id_column="id",
        normalize="standard",
        split=[0.5, 0.25, 0.25],
    )
    b = build_data(cfg, seed=0)
    assert b.info.shape == (2,) and b.info.meta["columns"] == ["a", "b"]
    assert torch.allclose(b.train.x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(b.train.x.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert b.test is not None and len(b.test) == 5 and b.info.meta["kind"] == "count"
    assert len(b.info.meta["mean"]) == 2 and b.info.meta["likelihood"] == "gaussian"
    json.dumps(b.info.meta)  # JSON-able


def test_table_non_numeric_cell_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(DataError, match=r"t.csv: row 2 \(line 3\), column 'b': 'oops' is not a number"):
        build_data(DataConfig(source="table", path=str(path)), seed=0)
    with pytest.raises(ConfigError, match="data.columns: no column 'c'; the columns are: a, b"):
        build_data(DataConfig(source="table", path=str(path), columns=["c"]), seed=0)


def test_table_missing_cells_raise_or_are_imputed(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n1\t2\n3\t\n5\tNA\n7\t4\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'b': missing value"):
        build_data(DataConfig(source="table", path=str(path), val_fraction=0), seed=0)
    b = build_data(DataConfig(source="table", path=str(path), impute="mean", val_fraction=0), seed=0)
    assert b.train.x[:, 1].tolist() == [2.0, 3.0, 3.0, 4.0] and b.info.meta["imputed_cells"] == 2
    z = build_data(DataConfig(source="table", path=str(path), impute="zero", val_fraction=0), seed=0)
    assert z.train.x[:, 1].tolist() == [2.0, 0.0, 0.0, 4.0]


def test_table_without_header_semicolons_and_binary_kind(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("0;1;1\n1;0;1\n0;0;0\n1;1;1\n")
    b = build_data(DataConfig(source="table", path=str(path), val_fraction=0.25, columns=[0, 2]), seed=0)
    assert b.info.shape == (2,) and b.info.n_train + b.info.n_val == 4
    assert b.info.meta["kind"] == "binary" and b.info.meta["likelihood"] == "bce"
    with pytest.raises(DataError, match="not a binary value"):
        path.write_text("0;2\n1;0\n")
        build_data(DataConfig(source="table", path=str(path), kind="binary"), seed=0)


def test_table_minmax_statistics_come_from_the_training_split(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("v\n" + "\n".join(str(i) for i in range(10)) + "\n")
    b = build_data(DataConfig(source="table", path=str(path), normalize="minmax", val_fraction=0.3), seed=0)
    assert float(b.train.x.min()) == 0.0 and float(b.train.x.max()) == 1.0
    lo, hi = b.info.meta["min"][0], b.info.meta["max"][0]
    assert torch.allclose(
        b.val.x[:, 0] * (hi - lo) + lo,
        b.val.x.new_tensor(
            sorted(set(range(10)) - set((b.train.x[:, 0] * (hi - lo) + lo).round().int().tolist())),
            dtype=torch.float32,
        ),
        atol=1e-5,
    )


def test_table_numpy_npy_and_npz(tmp_path: Path) -> None:
    arr = np.arange(30, dtype=np.float64).reshape(10, 3)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", x=arr, other=arr[:, :1])
    b = build_data(DataConfig(source="table", path=str(tmp_path / "a.npy"), val_fraction=0), seed=0)
    assert torch.equal(b.train.x, torch.from_numpy(arr).float())
    c = build_data(
        DataConfig(source="table", path=str(tmp_path / "b.npz"), column="other", val_fraction=0), seed=0
    )
    assert c.info.shape == (1,)
    np.savez(tmp_path / "c.npz", p=arr, q=arr)
    with pytest.raises(ConfigError, match="data.column: name the array .* p, q"):
        build_data(DataConfig(source="table", path=str(tmp_path / "c.npz")), seed=0)


def test_table_parquet(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(
        pa.table({"a": [1.0, 2.0, 3.0, 4.0], "b": [0, 1, 0, 1], "s": ["u", "v", "w", "x"]}),
        tmp_path / "t.parquet",
    )
    b = build_data(
        DataConfig(source="table", path=str(tmp_path / "t.parquet"), columns=["a", "b"], val_fraction=0),
        seed=0,
    )
    assert b.train.x.tolist() == [[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]]


ARFF = """% a multi-label style file
@relation 'toy: -C 2'
@attribute 'feat one' numeric
@attribute f2 real
@attribute l1 {0,1}
@attribute l2 {0,1}
@data
{0 0.5, 2 1}
{1 2.0, 3 1}
1.5,?,0,1
{}
"""


def test_table_arff_dense_and_sparse_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.arff"
    path.write_text(ARFF)
    b = build_data(DataConfig(source="table", path=str(path), impute="zero", val_fraction=0), seed=0)
    assert b.info.meta["columns"] == ["feat one", "f2", "l1", "l2"]
    assert b.train.x.tolist() == [[0.5, 0, 1, 0], [0, 2, 0, 1], [1.5, 0, 0, 1], [0, 0, 0, 0]]
    path.write_text(ARFF.replace("{1 2.0, 3 1}", "{1 2.0, 9 1}"))
    with pytest.raises(DataError, match="t.arff: line 9: malformed sparse entry .9 1."):
        build_data(DataConfig(source="table", path=str(path)), seed=0)


# --------------------------------------------------------------------------------------------- tags
def _tags_csv(path: Path) -> Path:
    path.write_text(
        "id,aspects,caption\n"
        "1,\"['Rock', 'male  vocal']\",a song\n"
        '2,"[""rock"", ""piano""]",another\n'
        "3,\"['piano', 'ROCK', 'sad']\",x\n"
        '4,"[]",y\n'
    )
    return path


def test_tags_build_multi_hot_over_a_normalised_training_vocabulary(tmp_path: Path) -> None:
    path = _tags_csv(tmp_path / "t.csv")
    b = build_data(DataConfig(source="tags", path=str(path), column="aspects", val_fraction=0), seed=0)
    vocab = b.info.meta["vocabulary"]
    assert vocab == ["rock", "piano", "male vocal", "sad"] and b.info.meta["tag_counts"] == [3, 2, 1, 1]
    assert b.train.x.tolist()[0] == [1, 0, 1, 0] and b.train.x.tolist()[3] == [0, 0, 0, 0]
    assert b.info.meta["kind"] == "binary" and b.info.modality == "tabular"
    small = build_data(
        DataConfig(source="tags", path=str(path), column="aspects", min_count=2, val_fraction=0), 0
    )
    assert small.info.meta["vocabulary"] == ["rock", "piano"]
    top = build_data(
        DataConfig(source="tags", path=str(path), column="aspects", max_tags=1, val_fraction=0), 0
    )
    assert top.info.shape == (1,)


def test_tags_delimited_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("k,genres\n1,Jazz|Blues\n2,blues\n")
    b = build_data(
        DataConfig(source="tags", path=str(path), column="genres", delimiter="|", val_fraction=0), 0
    )
    assert b.info.meta["vocabulary"] == ["blues", "jazz"]


def test_tags_wrong_or_non_list_column_lists_the_columns(tmp_path: Path) -> None:
    path = _tags_csv(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="no column 'aspect'.*columns are: id, aspects, caption"):
        build_data(DataConfig(source="tags", path=str(path), column="aspect"), seed=0)
    with pytest.raises(
        DataError, match="line 2, column 'caption': 'a song' is not a list.*id, aspects, caption"
    ):
        build_data(DataConfig(source="tags", path=str(path), column="caption"), seed=0)


# ------------------------------------------------------------------------------------------ records
EBIRD_COLS = [
    "GLOBAL UNIQUE IDENTIFIER",
    "COMMON NAME",
    "SCIENTIFIC NAME",
    "OBSERVATION COUNT",
    "SAMPLING EVENT IDENTIFIER",
    "ALL SPECIES REPORTED",
    "GROUP IDENTIFIER",
    "",
]


def _ebird(path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    lines = ["\t".join(EBIRD_COLS)]
    for k, (sp, count, event, complete, group) in enumerate(rows):
        lines.append("\t".join([f"OBS{k}", sp.title(), sp, count, event, complete, group, ""]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_records_read_ebird_files_with_their_defaults(tmp_path: Path) -> None:
    path = _ebird(
        tmp_path / "ebd.txt",
        [
            ("Corvus corax", "2", "S1", "1", ""),
            ("Pica pica", "X", "S1", "1", ""),
            ("Corvus corax", "1", "S2", "1", "G1"),
            ("Corvus corax", "1", "S3", "1", "G1"),  # a shared checklist: the same event as S2
            ("Pica pica", "5", "S4", "0", ""),  # incomplete: filtered out
            ("Pica pica", "3", "S5", "1", ""),
        ],
    )
    b = build_data(DataConfig(source="records", path=str(path), val_fraction=0), seed=0)
    m = b.info.meta
    assert m["items"] == ["Corvus corax", "Pica pica"] and m["events"] == 3
    assert m["event_column"] == "SAMPLING EVENT IDENTIFIER" and m["filter"] == {"ALL SPECIES REPORTED": "1"}
    assert b.train.x.tolist() == [[1, 1], [1, 0], [0, 1]] and m["kind"] == "binary"
    c = build_data(DataConfig(source="records", path=str(path), values="count", val_fraction=0), seed=0)
    assert c.train.x.tolist() == [[2, 1], [2, 0], [0, 3]] and c.info.meta["x_counted_as_1"] == 1
    assert c.info.meta["kind"] == "count"


def test_records_zero_fill_from_an_events_file_and_drop_rare_items(tmp_path: Path) -> None:
    path = _ebird(
        tmp_path / "ebd.txt",
        [("A a", "1", "S1", "1", ""), ("B b", "1", "S1", "1", ""), ("A a", "1", "S2", "1", "")],
    )
    events = tmp_path / "sampling.txt"
    events.write_text(
        "SAMPLING EVENT IDENTIFIER\tALL SPECIES REPORTED\tGROUP IDENTIFIER\n"
        "S1\t1\t\nS2\t1\t\nS3\t1\t\nS4\t0\t\n"
    )
    b = build_data(
        DataConfig(
            source="records", path=str(path), events_path=str(events), min_item_events=2, val_fraction=0
        ),
        0,
    )
    assert b.info.meta["items"] == ["A a"] and b.train.x.tolist() == [[1], [1], [0]]
    assert b.info.meta["events_without_records"] == 1


def test_records_generic_columns_composite_event_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "surveys.csv"
    path.write_text("id,year,plot,species\n1,2000,1,DM\n2,2000,1,DM\n3,2000,2,PP\n4,2001,1,\n5,2001,1,DM\n")
    with pytest.raises(ConfigError, match="data.event_column: required.*id, year, plot, species"):
        build_data(DataConfig(source="records", path=str(path)), seed=0)
    cfg = DataConfig(
        source="records",
        path=str(path),
        event_column=["year", "plot"],
        item_column="species",
        values="count",
        val_fraction=0,
    )
    b = build_data(cfg, seed=0)
    assert b.info.meta["items"] == ["DM", "PP"] and b.train.x.tolist() == [[2, 0], [0, 1], [1, 0]]
    assert b.info.meta["records_without_item"] == 1
    with pytest.raises(ConfigError, match="data.item_column: no column 'sp'"):
        build_data(cfg.model_copy(update={"item_column": "sp"}), seed=0)
    f = build_data(cfg.model_copy(update={"filter": {"year": 2000}}), seed=0)
    assert f.info.n_train == 2


# -------------------------------------------------------------------------------------------- video
def _write_video(
    path: Path, frames: int, size: int = 32, codec: str = "mpeg4", fmt: str | None = None
) -> None:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.gop_size = 4  # keyframes every 4 frames, so seeking is exercised
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((size, size, 3), (8 * i) % 256, dtype=np.uint8), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_decode_frames_with_seek_matches_counting_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    _write_video(path, 30)
    idx = [13, 15, 17, 19]
    seeked = decode_frames(path, idx, 16, seek=True)
    counted = decode_frames(path, idx, 16, seek=False)
    assert seeked.shape == (3, 4, 16, 16) and torch.equal(seeked, counted)
    brightness = seeked.mean(dim=(0, 2, 3))
    assert torch.allclose(brightness, torch.tensor([8.0 * i / 255 for i in idx]), atol=0.02)


def test_video_folder_streams_slots_with_stride_and_frame_folders(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    root.mkdir()
    _write_video(root / "a.mp4", 24)
    _write_video(root / "b.avi", 16, fmt="avi")
    frames = root / "dump"
    frames.mkdir()
    for i in range(12):  # natural order: frame_2 before frame_10
        Image.fromarray(np.full((20, 20, 3), 10 * i, dtype=np.uint8)).save(frames / f"frame_{i}.png")
    cfg = DataConfig(
        source="video_folder", path=str(root), frames=3, frame_stride=2, image_size=16, val_fraction=0
    )
    b = build_data(cfg, seed=0)
    # slots of 3×2 = 6 frames: a 24 → 4, b 16 → 2, dump 12 → 2
    assert isinstance(b.train, FileSource) and len(b.train) == 8 and b.info.shape == (3, 3, 16, 16)
    assert b.info.meta["frame_folders"] == 1 and b.info.meta["clips"] == 8
    dump = [i for i, (v, _) in enumerate(b.train.slots) if b.train.videos[v].frame_files is not None]
    val_like = type(b.train)(b.train.videos, b.train.slots, 3, 2, 16, 3, random_start=False)
    x = val_like[dump[1]]["x"]  # slot 2 of the dump starts at frame 6: frames 6, 8, 10
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.tensor([60.0, 80.0, 100.0]) / 255, atol=0.01)
    batch = next(iter(BatchLoader(b.train, 4, shuffle=True, drop_last=True, seed=0)))
    assert batch["x"].shape == (4, 3, 3, 16, 16)


def test_video_training_start_is_random_within_the_slot_and_seeded(tmp_path: Path) -> None:
    _write_video(tmp_path / "a.mp4", 40)
    b = build_data(
        DataConfig(source="video_folder", path=str(tmp_path), frames=2, image_size=8, val_fraction=0), 0
    )
    starts = set()
    for epoch in range(8):
        b.train.set_epoch(epoch)
        _, idx = b.train.indices(3)
        starts.add(idx[0])
        assert 6 <= idx[0] <= 7 and idx[1] == idx[0] + 1  # slot 3 covers frames 6, 7
    assert starts == {6, 7}
    b.train.set_epoch(0)
    assert b.train.indices(3) == b.train.indices(3)


def test_video_unreadable_file_raises_naming_it_or_is_skipped(tmp_path: Path) -> None:
    _write_video(tmp_path / "good.mp4", 12)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match="broken.mp4"):
        build_data(DataConfig(source="video_folder", path=str(tmp_path), frames=4), seed=0)
    b = build_data(DataConfig(source="video_folder", path=str(tmp_path), frames=4, on_error="skip"), seed=0)
    assert b.info.skipped == 1 and b.info.n_train + b.info.n_val == 3


def test_audio_truncated_flac_fails_at_load_naming_it_or_is_replaced_when_skipping(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a.flac", "b.flac"):
        sf.write(tmp_path / name, (rng.random(8000) * 0.2 - 0.1).astype(np.float32), 8000)
    bad = tmp_path / "a.flac"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header still promises 8000 frames
    b = build_data(DataConfig(source="audio_folder", path=str(tmp_path), segment=0.5, val_fraction=0), seed=0)
    with pytest.raises(DataError, match="a.flac: cannot decode audio"):
        [b.train[i] for i in range(len(b.train))]
    s = build_data(
        DataConfig(source="audio_folder", path=str(tmp_path), segment=0.5, val_fraction=0, on_error="skip"), 0
    )
    assert all(s.train[i]["x"].shape == (1, 4000) for i in range(len(s.train)))


# ----------------------------------------------------------------------------------------- examples
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _tiny_files(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Tiny stand-ins for the shared data sets, as data.* overrides per example file."""
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(6):
        sf.write(audio / f"{i % 3}_x_{i}.wav", _tone(4000, 8000), 8000)
    tags = _tags_csv(tmp_path / "tags.csv").read_text().replace("aspects", "aspect_list")
    (tmp_path / "tags.csv").write_text(tags)
    ebd = _ebird(tmp_path / "ebd.txt", [("A a", "1", f"S{i}", "1", "") for i in range(10)])
    events = tmp_path / "sampling.txt"
    events.write_text(
        "SAMPLING EVENT IDENTIFIER\tALL SPECIES REPORTED\n" + "".join(f"S{i}\t1\n" for i in range(12))
    )
    table = tmp_path / "surveys.csv"
    table.write_text(
        "record_id,month,day,year,plot_id,species_id,sex,hindfoot_length,weight\n"
        + "".join(
            f"{i},{i % 12 + 1},{i % 28 + 1},1990,{i % 5},DM,M,{30 + i % 3},{'' if i % 4 else 40 + i}\n"
            for i in range(20)
        )
        + "21,1,1,1991,2,PP,F,20,12\n"
    )
    video = tmp_path / "video"
    video.mkdir()
    _write_video(video / "a.mp4", 48)
    return {
        "audio_digits.yaml": {"path": str(audio)},
        "tags_musiccaps.yaml": {"path": str(tmp_path / "tags.csv"), "min_count": "1"},
        "records_ebird.yaml": {"path": str(ebd), "events_path": str(events)},
        "table_portal.yaml": {"path": str(table)},
        "video_clips.yaml": {"path": str(video)},
    }


def test_example_configs_validate_and_build_on_tiny_files(tmp_path: Path) -> None:
    from vaekit.config.load import load_config

    for name, data in _tiny_files(tmp_path).items():
        cfg = load_config(EXAMPLES / name, [f"data.{k}={v}" for k, v in data.items()])
        b = build_data(cfg.data, seed=0)
        assert b.info.n_train > 0 and b.test is not None, name
        assert b.train[0]["x"].shape == b.info.shape, name
        json.dumps(b.info.meta)
