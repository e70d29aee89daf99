"""Tag lists (source ``tags``): one CSV column of tag lists → multi-hot vectors over a vocabulary.

A cell is a list written as a Python literal (``['rock', 'male vocal']``), JSON (``["rock", "male vocal"]``) or,
with ``data.delimiter``, a delimited string (``rock|male vocal``). Tags are lower-cased and their whitespace
collapsed. The vocabulary is built from the TRAINING split only: tags present in at least ``data.min_count``
training rows, at most ``data.max_tags`` of the most frequent (ties broken by name). Validation/test tags outside
it are dropped. ``info.meta`` holds ``vocabulary`` (the order of the vector's entries), ``tag_counts`` (training
rows per tag), ``kind: binary`` and ``likelihood: bce``.

`multi_hot` and `build_vocabulary` are shared with the ``records`` source.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.config.schema import DataConfig
from vaekit.data.base import ArraySource, DataBundle, DataError, DataInfo, data_file, describe, split_three
from vaekit.data.tables import read_csv
from vaekit.errors import ConfigError


def normalize_tag(tag: Any) -> str:
    """Lower-case, whitespace collapsed to single spaces, stripped."""
    return " ".join(str(tag).lower().split())


def parse_tag_cell(cell: str, delimiter: str | None) -> list[str] | None:
    """A cell's tags, normalised and de-duplicated in order; None when the cell is not a list.

    Python literals and JSON lists are tried first; with ``delimiter`` a plain string is split on it.
    An empty cell is an empty list.
    """
    s = cell.strip()
    if not s:
        return []
    items: Any = None
    if s[0] in "[(":
        for parse in (ast.literal_eval, json.loads):
            try:
                items = parse(s)
                break
            except (ValueError, SyntaxError, json.JSONDecodeError, MemoryError, RecursionError):
                continue
    if items is None and delimiter is not None:
        items = s.split(delimiter)
    if not isinstance(items, list | tuple) or not all(isinstance(t, str | int | float) for t in items):
        return None
    out = [normalize_tag(t) for t in items]
    return list(dict.fromkeys(t for t in out if t))


def build_vocabulary(
    bags: Sequence[Mapping[str, float]], train_idx: Sequence[int], min_count: int, max_items: int | None
) -> tuple[list[str], list[int]]:
    """Items present in at least ``min_count`` training bags, most frequent first (ties by name), at most
    ``max_items``. Returns (items, training bags per item)."""
    df: Counter[str] = Counter()
    for i in train_idx:
        df.update(bags[i].keys())
    ranked = sorted((k for k, n in df.items() if n >= min_count), key=lambda k: (-df[k], k))
    if max_items is not None:
        ranked = ranked[:max_items]
    return ranked, [df[k] for k in ranked]


def multi_hot(bags: Sequence[Mapping[str, float]], vocab: list[str], counts: bool = False) -> Tensor:
    """(N, V) float32: 1 where bag n holds item v (or its value with ``counts``), else 0."""
    index = {k: j for j, k in enumerate(vocab)}
    x = np.zeros((len(bags), len(vocab)), dtype=np.float32)
    for n, bag in enumerate(bags):
        for k, v in bag.items():
            j = index.get(k)
            if j is not None:
                x[n, j] = v if counts else 1.0
    return torch.from_numpy(x)


def bag_bundle(
    name: str,
    bags: list[dict[str, float]],
    cfg: DataConfig,
    seed: int,
    min_count: int,
    note: str,
    meta: dict[str, Any],
    counts: bool = False,
    item_key: str = "vocabulary",
) -> DataBundle:
    """Split ``bags`` (seeded), build the vocabulary on the training split, and wrap the multi-hot rows."""
    tr, va, te = split_three(len(bags), cfg.split, cfg.val_fraction, seed)
    vocab, df = build_vocabulary(bags, tr.tolist(), min_count, cfg.max_tags)
    if not vocab:
        raise ConfigError(
            f"data.min_count: no {'item' if item_key == 'items' else 'tag'} is present in {min_count} or more "
            f"of the {len(tr)} training rows; lower it"
        )
    x = multi_hot(bags, vocab, counts)  # (N, V)
    empty = int((x.sum(1) == 0).sum())
    train, val = ArraySource(x[tr]), ArraySource(x[va])
    test = ArraySource(x[te]) if len(te) else None
    shape = (len(vocab),)
    kind = "count" if counts and bool((x > 1).any()) else "binary"
    meta = {
        **meta,
        item_key: vocab,
        f"{'item' if item_key == 'items' else 'tag'}_counts": df,
        "kind": kind,
        "likelihood": "bce" if kind == "binary" else "gaussian",
        "empty_rows": empty,
    }
    info = DataInfo(
        modality="tabular",
        shape=shape,
        n_train=len(tr),
        n_val=len(va),
        n_test=len(te),
        value_range=(0.0, float(x.max()) if x.numel() else 1.0),
        description=describe(name, len(tr), len(va), shape, note, len(te)),
        meta=meta,
    )
    return DataBundle(train, val, info, test)


def build_tags(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``tags`` source: ``data.column`` of the CSV file ``data.path`` as multi-hot tag vectors."""
    path = data_file(cfg.path, "tags", "a .csv/.tsv file with a column of tag lists")
    names, rows, header = read_csv(path, True if cfg.header is None else cfg.header)
    shown = ", ".join(names[:40]) + (f", … {len(names) - 40} more" if len(names) > 40 else "")
    if cfg.column is None:
        raise ConfigError(f"data.column: required for data.source=tags; the columns of {path.name} are: {shown}")
    if cfg.column not in names:
        raise ConfigError(f"data.column: no column {cfg.column!r} in {path.name}; the columns are: {shown}")
    c = names.index(cfg.column)
    if cfg.num_samples is not None:
        rows = rows[: cfg.num_samples]
    bags: list[dict[str, float]] = []
    for r, row in enumerate(rows):
        tags = parse_tag_cell(row[c], cfg.delimiter)
        if tags is None:
            line = r + 1 + int(header)
            hint = "" if cfg.delimiter else " (set data.delimiter for delimited strings)"
            raise DataError(
                f"{path}: line {line}, column {cfg.column!r}: {row[c][:60]!r} is not a list of tags{hint}; "
                f"the columns are: {shown}"
            )
        bags.append(dict.fromkeys(tags, 1.0))
    if not bags:
        raise DataError(f"{path}: no data rows")
    meta = {"file": str(path), "column": cfg.column, "rows": len(bags)}
    note = f"{path.name}:{cfg.column}, multi-hot"
    return bag_bundle("tags", bags, cfg, seed, cfg.min_count, note, meta)
