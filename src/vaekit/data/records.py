"""Observation records (source ``records``): long-format rows (event, item[, count]) → an events × items matrix.

Each row of the delimited file ``data.path`` records one item (a species, a product, ...) in one event (a
checklist, a basket, a survey). The rows are pivoted into one vector per event: 1/0 presence, or with
``data.values: count`` the summed counts of ``data.count_column`` (``X``, eBird's "present, not counted", counts
1; without a count column every record counts 1, e.g. one row per captured animal). ``data.filter`` keeps
rows whose columns hold given values; ``data.events_path`` lists every event (e.g. the eBird sampling file), so
events without any record become rows of zeros (zero-filling). The split is over events (seeded); the items are
those present in at least ``max(data.min_count, data.min_item_events)`` training events (at most
``data.max_tags``), most frequent first, and go to ``info.meta["items"]``.

eBird Basic Dataset defaults (when the columns exist and the keys are unset): event = ``SAMPLING EVENT
IDENTIFIER`` with shared checklists collapsed to their ``GROUP IDENTIFIER``; item = ``SCIENTIFIC NAME`` (else
``COMMON NAME``); count = ``OBSERVATION COUNT``; filter = complete checklists (``ALL SPECIES REPORTED`` = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit.config.schema import DataConfig
from vaekit.data.base import DataBundle, DataError, data_file
from vaekit.data.tables import read_csv
from vaekit.data.tags import bag_bundle
from vaekit.errors import ConfigError

EBIRD_EVENT = "SAMPLING EVENT IDENTIFIER"
EBIRD_GROUP = "GROUP IDENTIFIER"
EBIRD_COUNT = "OBSERVATION COUNT"
EBIRD_COMPLETE = "ALL SPECIES REPORTED"


def _columns_line(names: list[str]) -> str:
    return ", ".join(names[:60]) + (f", … {len(names) - 60} more" if len(names) > 60 else "")


def _index(names: list[str], column: str, setting: str, path: Path) -> int:
    if column not in names:
        raise ConfigError(f"{setting}: no column {column!r} in {path.name}; the columns are: {_columns_line(names)}")
    return names.index(column)


def _filters(cfg_filter: dict[str, Any] | None, names: list[str], path: Path, strict: bool) -> list[tuple[int, set]]:
    """(column index, accepted values) pairs; unknown columns are an error when ``strict``, else ignored."""
    out = []
    for col, value in (cfg_filter or {}).items():
        if col not in names:
            if strict:
                raise ConfigError(
                    f"data.filter: no column {col!r} in {path.name}; the columns are: {_columns_line(names)}"
                )
            continue
        values = value if isinstance(value, list | tuple | set) else [value]
        out.append((names.index(col), {_as_text(v) for v in values}))
    return out


def _as_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _event_key(row: list[str], idx: list[int], group: int | None) -> str:
    if group is not None and row[group].strip():
        return row[group].strip()
    return "|".join(row[i].strip() for i in idx)


@dataclass
class RecordColumns:
    """Where the record fields are: resolved from the config, else the eBird defaults."""

    event_cols: list[str]
    item_col: str
    count_col: str | None
    counted: bool
    filter: dict[str, Any]
    ev_idx: list[int]
    it_idx: int
    ct_idx: int | None
    group: int | None
    """The eBird GROUP IDENTIFIER column (shared checklists collapsed), when the event column is the default."""
    filters: list[tuple[int, set]]
    """(column index, accepted values) of ``filter`` in the records file."""


def record_columns(cfg: DataConfig, names: list[str], path: Path) -> RecordColumns:
    """The columns to read: explicit, else eBird defaults, else a one-line error listing the columns."""
    ebird = EBIRD_EVENT in names
    if cfg.event_column is not None:
        event_cols = [cfg.event_column] if isinstance(cfg.event_column, str) else list(cfg.event_column)
    elif ebird:
        event_cols = [EBIRD_EVENT]
    else:
        raise ConfigError(f"data.event_column: required for {path.name}; the columns are: {_columns_line(names)}")
    item_col = cfg.item_column
    if item_col is None:
        item_col = next((c for c in ("SCIENTIFIC NAME", "COMMON NAME") if c in names), None) if ebird else None
        if item_col is None:
            raise ConfigError(f"data.item_column: required for {path.name}; the columns are: {_columns_line(names)}")
    count_col = cfg.count_column or (EBIRD_COUNT if ebird and EBIRD_COUNT in names else None)
    flt = cfg.filter if cfg.filter is not None else ({EBIRD_COMPLETE: "1"} if EBIRD_COMPLETE in names else {})
    counted = cfg.values == "count" and count_col is not None
    return RecordColumns(
        event_cols=event_cols,
        item_col=item_col,
        count_col=count_col,
        counted=counted,
        filter=flt,
        ev_idx=[_index(names, c, "data.event_column", path) for c in event_cols],
        it_idx=_index(names, item_col, "data.item_column", path),
        ct_idx=_index(names, count_col, "data.count_column", path) if counted else None,  # type: ignore[arg-type]
        group=names.index(EBIRD_GROUP) if cfg.event_column is None and ebird and EBIRD_GROUP in names else None,
        filters=_filters(flt, names, path, strict=True),
    )


def known_events(cfg: DataConfig, cols: RecordColumns) -> dict[str, dict[str, float]] | None:
    """Every event of ``data.events_path`` (zero-filling) as an empty bag; None without that file."""
    if cfg.events_path is None:
        return None
    epath = Path(cfg.events_path)
    if not epath.is_file():
        raise DataError(f"{epath}: data.events_path is not a file")
    enames, erows, _ = read_csv(epath, True if cfg.header is None else cfg.header)
    e_idx = [_index(enames, c, "data.event_column", epath) for c in cols.event_cols]
    e_group = enames.index(EBIRD_GROUP) if cols.group is not None and EBIRD_GROUP in enames else None
    e_filters = _filters(cols.filter, enames, epath, strict=False)
    events: dict[str, dict[str, float]] = {}
    for row in erows:
        if all(row[i].strip() in ok for i, ok in e_filters):
            events.setdefault(_event_key(row, e_idx, e_group), {})
    return events


def _count(cell: str, path: Path, line: int, column: str | None) -> float | None:
    """A count cell's value; None for ``X`` (present, not counted: counts 1). DataError naming line and column
    for anything that is not a finite non-negative number."""
    cell = cell.strip()
    if cell.upper() == "X":
        return None
    try:
        value = float(cell)
    except ValueError:
        raise DataError(
            f"{path}: line {line}, column {column!r}: {cell[:40]!r} is not a count (numbers, or X for present)"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{path}: line {line}, column {column!r}: {cell[:40]!r} is not a finite count")
    if value < 0:
        raise DataError(f"{path}: line {line}, column {column!r}: negative count")
    return value


def pivot(
    rows: list[list[str]], cols: RecordColumns, events: dict[str, dict[str, float]] | None, path: Path, header: bool
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Pivot the record rows into one bag (item → summed value) per event.

    Returns:
        (bags by event key, in first-seen order after the events file's; tallies ``records``, ``x_cells``,
        ``no_item`` for ``info.meta``).
    """
    restrict = events is not None
    bags: dict[str, dict[str, float]] = events if events is not None else {}
    kept = x_cells = no_item = 0
    for r, row in enumerate(rows):
        if not all(row[i].strip() in ok for i, ok in cols.filters):
            continue
        key = _event_key(row, cols.ev_idx, cols.group)
        if restrict and key not in bags:
            continue
        item = row[cols.it_idx].strip()
        if not item:
            no_item += 1
            bags.setdefault(key, {})
            continue
        value = 1.0
        if cols.ct_idx is not None:
            counted = _count(row[cols.ct_idx], path, r + 1 + int(header), cols.count_col)
            x_cells += counted is None
            value = 1.0 if counted is None else counted
        bag = bags.setdefault(key, {})
        bag[item] = bag.get(item, 0.0) + value
        kept += 1
    return bags, {"records": kept, "x_cells": x_cells, "no_item": no_item}


def build_records(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``records`` source: pivot the long-format file ``data.path`` into events × items."""
    path = data_file(cfg.path, "records", "a .csv/.tsv/.txt file of records")
    names, rows, header = read_csv(path, True if cfg.header is None else cfg.header)
    cols = record_columns(cfg, names, path)
    events, tally = pivot(rows, cols, known_events(cfg, cols), path, header)
    if not events:
        raise DataError(f"{path}: no records left after data.filter={cols.filter}")
    keys = list(events)[: cfg.num_samples] if cfg.num_samples is not None else list(events)
    bags = [events[k] for k in keys]
    meta = {
        "file": str(path),
        "event_column": cols.event_cols if len(cols.event_cols) > 1 else cols.event_cols[0],
        "item_column": cols.item_col,
        "count_column": cols.count_col if cols.counted else None,
        "values": cfg.values,
        "filter": dict(cols.filter),
        "events": len(bags),
        "records": tally["records"],
        "events_without_records": sum(not b for b in bags),
    }
    if cols.group is not None:
        meta["shared_checklists_collapsed_by"] = EBIRD_GROUP
    if cfg.events_path is not None:
        meta["events_path"] = str(cfg.events_path)
    if tally["x_cells"]:
        meta["x_counted_as_1"] = tally["x_cells"]
    if tally["no_item"]:
        meta["records_without_item"] = tally["no_item"]
    note = f"{path.name}, {len(bags)} events × {cols.item_col}, {cfg.values}"
    min_count = max(cfg.min_count, cfg.min_item_events)
    return bag_bundle("records", bags, cfg, seed, min_count, note, meta, counts=cfg.values == "count", item_key="items")
