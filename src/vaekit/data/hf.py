"""Hugging Face ``datasets`` (source ``hf``): a hub id, a ``save_to_disk`` folder, or Parquet/Arrow/CSV files.

``data.path`` is tried as a local ``save_to_disk`` folder, then as local files (``.parquet``, ``.arrow``, ``.csv``,
``.jsonl``: one file, a glob, or a folder of them), else as a hub id (``load_dataset(path, data.hf.name)``; an
unreachable hub is one line saying how to get a local copy). ``data.hf`` names the split and the columns:

- ``image_column``: ``x`` is the image decoded, resized and cropped as image_folder does it (same crop/flip);
- ``audio_column``: ``x`` is a segment read as audio_folder does it (``data.segment``, ``data.sample_rate``);
- ``tags_column``: a list of tags per row (a list feature, or a string such as MusicCaps' ``aspect_list``,
  parsed as the tags source does) → multi-hot over a vocabulary built on the training split
  (``data.min_count``, ``data.max_tags``): ``x`` when there is no image/audio column, else ``y``;
- ``numeric_columns``: ``x`` when there is nothing else, else ``y`` (float);
- ``label_column``: a class column: ``y`` (long; a ``ClassLabel``'s names go to ``meta["classes"]``).

Image and audio columns are read undecoded (``decode=False``: bytes or a path) and decoded by vaekit, so no
optional decoder of ``datasets`` is needed and the folder sources' exact transforms apply. ``data.hf.streaming``
reads the head of an iterable dataset (``data.num_samples`` rows, required) into memory: for data sets larger than
the disk, sampled from their start. Without ``data.hf.val_split`` the validation (and ``data.split`` test) rows are
a seeded split of ``data.hf.split``.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.base import ArraySource, DataBundle, DataError, DataInfo, FileSource, describe, split_three
from vaekit.data.images import DEFAULT_SIZE
from vaekit.data.shards import Decode, _via_file, decode_member
from vaekit.data.tags import build_vocabulary, multi_hot, normalize_tag, parse_tag_cell
from vaekit.errors import ConfigError

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".jsonl": "json", ".json": "json"}


# ------------------------------------------------------------------------------------------- opening
def _local_files(path: str) -> tuple[str, list[str]] | None:
    """(builder, files) when ``path`` names local data files (a file, a glob or a folder of them)."""
    p = Path(path)
    if glob.has_magic(path):
        files = sorted(glob.glob(path))
    elif p.is_dir():
        files = [str(f) for f in sorted(p.iterdir())]
    else:
        files = [path] if p.is_file() else []
    by_kind: dict[str, list[str]] = {}
    for f in files:
        kind = FILE_BUILDERS.get(Path(f).suffix.lower())
        if kind:
            by_kind.setdefault(kind, []).append(f)
    if not by_kind:
        return None
    kind = max(by_kind, key=lambda k: len(by_kind[k]))
    return kind, by_kind[kind]


def _select(ds: Any, split: str, where: str, key: str = "data.hf.split") -> Any:
    import datasets

    if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split not in ds:
            raise ConfigError(f"{key}: no split {split!r} in {where}; it has {sorted(ds)}")
        return ds[split]
    if key == "data.hf.val_split":
        raise ConfigError(f"data.hf.val_split: {where} is one dataset without splits; unset it")
    return ds


def open_dataset(cfg: DataConfig, split: str, key: str) -> Any:
    """The ``split`` of ``data.path`` as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming)."""
    import datasets

    datasets.disable_progress_bars()

    path, hf = str(cfg.path), cfg.hf
    p = Path(path)
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        if hf.streaming:
            raise ConfigError("data.hf.streaming: a save_to_disk folder is read memory-mapped; set it to false")
        try:
            loaded = datasets.load_from_disk(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot load the save_to_disk folder ({e})") from e
        return _select(loaded, split, path, key)
    local = _local_files(path)
    if local is not None:
        kind, files = local
        try:
            ds = datasets.load_dataset(kind, data_files={"train": files}, split="train", streaming=hf.streaming)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the {kind} file(s) ({type(e).__name__}: {e})") from e
        if split != "train" or key == "data.hf.val_split":
            raise ConfigError(f"{key}: local {kind} files are one split; keep data.hf.split=train, unset val_split")
        return ds
    if p.exists() or path.startswith((".", "/", "~")):
        raise DataError(f"{path}: not a save_to_disk folder nor Parquet/Arrow/CSV/JSONL files")
    try:
        return datasets.load_dataset(path, hf.name, split=split, streaming=hf.streaming, revision=hf.revision)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds (offline, missing, gated): all are one line
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{path}: cannot load this hub dataset ({first}); offline? where the hub is reachable run "
            f"datasets.load_dataset({path!r}).save_to_disk(DIR) and set data.path=DIR"
        ) from None


def _undecoded(ds: Any, cfg: DataConfig) -> Any:
    """Image and audio columns cast to undecoded bytes/paths (vaekit decodes them)."""
    import datasets

    hf = cfg.hf
    features = ds.features or {}
    for col, kind in ((hf.image_column, datasets.Image), (hf.audio_column, datasets.Audio)):
        if col is not None and isinstance(features.get(col), kind):
            ds = ds.cast_column(col, kind(decode=False))
    return ds


def _rows(ds: Any, cfg: DataConfig) -> Any:
    """A map-style view of ``ds``: the dataset itself, or for a stream its first ``data.num_samples`` rows."""
    import datasets

    if not isinstance(ds, datasets.IterableDataset):
        return ds.select(range(min(len(ds), cfg.num_samples))) if cfg.num_samples else ds
    if cfg.num_samples is None:
        raise ConfigError("data.num_samples: required with data.hf.streaming=true (the rows read from the stream)")
    rows = []
    for row in ds:
        rows.append(row)
        if len(rows) >= cfg.num_samples:
            break
    return datasets.Dataset.from_list(rows, features=ds.features) if ds.features else datasets.Dataset.from_list(rows)


def _check_columns(ds: Any, cfg: DataConfig) -> None:
    hf, names = cfg.hf, list(ds.column_names or [])
    wanted = {"image_column": hf.image_column, "audio_column": hf.audio_column, "tags_column": hf.tags_column,
              "label_column": hf.label_column}
    shown = ", ".join(names[:40])
    for key, col in wanted.items():
        if col is not None and col not in names:
            raise ConfigError(f"data.hf.{key}: no column {col!r}; the columns are: {shown}")
    for col in hf.numeric_columns or []:
        if col not in names:
            raise ConfigError(f"data.hf.numeric_columns: no column {col!r}; the columns are: {shown}")
    if not any([hf.image_column, hf.audio_column, hf.tags_column, hf.numeric_columns]):
        raise ConfigError(f"data.hf: name the x column (image_column, audio_column, tags_column or "
                          f"numeric_columns); the columns are: {shown}")
    if hf.image_column and hf.audio_column:
        raise ConfigError("data.hf: image_column and audio_column: set one (x is one modality)")


# ------------------------------------------------------------------------------------------- columns
def tag_bags(values: list[Any], cfg: DataConfig, column: str) -> list[dict[str, float]]:
    """Each row's tags (a list, or a string parsed as the tags source does) as a bag."""
    bags = []
    for r, cell in enumerate(values):
        if cell is None:
            tags: list[str] | None = []
        elif isinstance(cell, list | tuple):
            tags = list(dict.fromkeys(t for t in (normalize_tag(v) for v in cell) if t))
        else:
            tags = parse_tag_cell(str(cell), cfg.delimiter)
        if tags is None:
            hint = "" if cfg.delimiter else " (set data.delimiter for delimited strings)"
            raise DataError(f"{cfg.path}: row {r}, column {column!r}: {str(cell)[:60]!r} is not a list of tags{hint}")
        bags.append(dict.fromkeys(tags, 1.0))
    return bags


def numeric(ds: Any, columns: list[str], where: str) -> Tensor:
    """The ``columns`` of ``ds`` as (N, len(columns)) float32; DataError naming a non-numeric column."""
    out = []
    for col in columns:
        try:
            arr = np.asarray(ds[col], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: column {col!r} is not numeric ({e})") from e
        if arr.ndim != 1:
            raise DataError(f"{where}: column {col!r} holds arrays of shape {arr.shape[1:]} (scalars expected)")
        out.append(arr)
    return torch.from_numpy(np.stack(out, axis=1))


def _media_bytes(value: Any, where: str) -> tuple[bytes, str]:
    """An undecoded image/audio cell (``{"bytes", "path"}``, raw bytes or a path) as (bytes, extension)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    else:
        data, path = (value, None) if isinstance(value, bytes) else (None, value)
    ext = Path(path).suffix.lower().lstrip(".") if isinstance(path, str) and Path(path).suffix else ""
    if data is None and isinstance(path, str):
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"{where}: cannot read {path} ({e})") from e
    if not isinstance(data, bytes):
        raise DataError(f"{where}: not an image/audio cell (bytes or a path); got {type(value).__name__}")
    return data, ext


class HFMediaSource(FileSource):
    """Rows of a dataset whose image or audio column is ``x``; ``y`` precomputed (labels, tags, numbers)."""

    def __init__(self, rows: Any, column: str, decode: Decode, y: Tensor | None, name: str, *, seed: int = 0,
                 skip_errors: bool = False) -> None:
        super().__init__(seed=seed, augment=decode.random_crop or decode.flip)
        self.rows, self.column, self.decode, self.y, self.name = rows, column, decode, y, name
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int) -> dict[str, Tensor]:
        where = f"{self.name}[{i}].{self.column}"
        data, ext = _media_bytes(self.rows[i][self.column], where)
        d = self.decode if not ext or self.decode.modality == "image" else Decode(**{**self.decode.__dict__, "ext": ext})
        try:
            x = decode_member(data, d, self.generator(i) if self.augment else None)
        except DataError as e:
            raise DataError(f"{where}: {str(e).split(': ', 1)[-1]}") from e
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{where}: cannot decode ({type(e).__name__}: {e})") from e
        return {"x": x} if self.y is None else {"x": x, "y": self.y[i]}

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        for k in range(len(self.rows)):
            try:
                return self.load((i + k) % len(self.rows))
            except DataError as err:
                if not self.skip_errors:
                    raise
                logger.warning("warning: skipping undecodable row (data.on_error=skip): %s", err)
        raise DataError(f"{self.name}: no readable row left")


# ------------------------------------------------------------------------------------------- the source
def _splits(cfg: DataConfig, seed: int) -> tuple[Any, Any, Any]:
    """(train, val, test-or-None) row sets."""
    hf = cfg.hf
    rows = _rows(_undecoded(open_dataset(cfg, hf.split, "data.hf.split"), cfg), cfg)
    _check_columns(rows, cfg)
    if len(rows) == 0:
        raise DataError(f"{cfg.path}: split {hf.split!r} has no rows")
    if hf.val_split is not None:
        val = _rows(_undecoded(open_dataset(cfg, hf.val_split, "data.hf.val_split"), cfg), cfg)
        return rows, val, None
    tr, va, te = split_three(len(rows), cfg.split, cfg.val_fraction, seed)
    pick = lambda idx: rows.select(idx.tolist())  # noqa: E731
    return pick(tr), pick(va), pick(te) if len(te) else None


def _targets(parts: list[Any], cfg: DataConfig, meta: dict[str, Any]) -> tuple[list[Tensor | None], list[str] | None]:
    """Per split, the tags (multi-hot, vocabulary from the first part), numeric and label columns side by side."""
    hf = cfg.hf
    blocks: list[list[Tensor]] = [[] for _ in parts]
    names: list[str] = []
    if hf.tags_column:
        bags = [tag_bags(p[hf.tags_column], cfg, hf.tags_column) if p is not None else [] for p in parts]
        vocab, counts = build_vocabulary(bags[0], range(len(bags[0])), cfg.min_count, cfg.max_tags)
        if not vocab:
            raise ConfigError(f"data.min_count: no tag is present in {cfg.min_count} or more training rows; lower it")
        meta.update(vocabulary=vocab, tag_counts=counts)
        names += vocab
        for b, bag in zip(blocks, bags, strict=True):
            b.append(multi_hot(bag, vocab))
    if hf.numeric_columns:
        names += list(hf.numeric_columns)
        for b, p in zip(blocks, parts, strict=True):
            b.append(numeric(p, hf.numeric_columns, str(cfg.path)) if p is not None else torch.zeros(0))
    if hf.label_column:
        feature = parts[0].features.get(hf.label_column)
        if hasattr(feature, "names"):
            meta["classes"] = list(feature.names)
        for b, p in zip(blocks, parts, strict=True):
            if p is not None:
                b.append(torch.as_tensor(np.asarray(p[hf.label_column], dtype=np.int64)))
        names = names or ["label"]
        if hf.tags_column or hf.numeric_columns:
            raise ConfigError("data.hf.label_column: with tags or numeric columns as y, leave the label out "
                              "(y is one tensor)")
    out = [torch.cat(b, dim=1) if len(b) > 1 else (b[0] if b else None) for b in blocks]
    return out, names or None


def _media_decode(cfg: DataConfig, first: Any) -> Decode:
    hf = cfg.hf
    if hf.image_column:
        channels = cfg.channels or 3
        if channels not in (1, 3):
            raise ConfigError(f"data.channels: must be 1 or 3 for images (got {channels})")
        return Decode("png", "image", size=cfg.image_size or DEFAULT_SIZE, channels=channels,
                      random_crop=cfg.crop == "random", flip=cfg.flip)
    from vaekit.data.audio import probe_audio

    data, ext = _media_bytes(first[hf.audio_column], f"{cfg.path}[0].{hf.audio_column}")
    rate = cfg.sample_rate or _via_file(data, ext or "wav", probe_audio).sample_rate
    return Decode(ext or "wav", "audio", channels=cfg.channels or 1, rate=rate, length=round(cfg.segment * rate),
                  random_crop=True)


def build_hf(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``hf`` source: ``data.path`` as a Hugging Face dataset, columns named in ``data.hf``."""
    if cfg.path is None:
        raise ConfigError("data.path: required for data.source=hf (a hub id, a save_to_disk folder or data files)")
    hf = cfg.hf
    train, val, test = _splits(cfg, seed)
    meta: dict[str, Any] = {"dataset": str(cfg.path), "split": hf.split}
    media = hf.image_column or hf.audio_column
    ys, names = _targets([train, val, test], cfg, meta)
    skip = cfg.on_error == "skip"
    if media:
        d = _media_decode(cfg, train[0])
        ev = Decode(**{**d.__dict__, "random_crop": False, "flip": False})
        sources = [HFMediaSource(p, media, d if i == 0 else ev, y, f"{cfg.path}:{hf.split}", seed=seed,
                                 skip_errors=skip) if p is not None else None
                   for i, (p, y) in enumerate(zip([train, val, test], ys, strict=True))]
        modality, low = d.modality, (-1.0 if d.modality == "audio" else 0.0)
        if d.modality == "audio":
            meta["sample_rate"] = d.rate
        factor_names, high = names, 1.0
    else:  # tags and/or numeric columns are x
        if hf.label_column:
            raise ConfigError("data.hf.label_column: needs an image or audio column as x (tags/numbers are x here)")
        sources = [ArraySource(y) if y is not None else None for y in ys]
        modality, factor_names = "tabular", None
        x0 = ys[0]
        low, high = float(x0.min()), float(x0.max())
        if hf.tags_column and not hf.numeric_columns:
            meta.update(kind="binary", likelihood="bce")
    tr, va, te = sources
    shape = tuple(tr[0]["x"].shape)
    n_test = len(te) if te is not None else 0
    note = f"{cfg.path}" + (" (streamed head)" if hf.streaming else "") + (f", x={media}" if media else "")
    info = DataInfo(modality=modality, shape=shape, n_train=len(tr), n_val=len(va), value_range=(low, high),  # type: ignore[arg-type]
                    factor_names=factor_names, description=describe("hf", len(tr), len(va), shape, note, n_test),
                    n_test=n_test, meta=meta)
    return DataBundle(tr, va, info, te)
