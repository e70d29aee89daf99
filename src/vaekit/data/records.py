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


def build_records(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``records`` source: pivot the long-format file ``data.path`` into events × items."""
    path = data_file(cfg.path, "records", "a .csv/.tsv/.txt file of records")
    names, rows, header = read_csv(path, True if cfg.header is None else cfg.header)
    ebird = EBIRD_EVENT in names

    # columns: explicit, else eBird defaults, else a one-line error listing the columns
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

    ev_idx = [_index(names, c, "data.event_column", path) for c in event_cols]
    it_idx = _index(names, item_col, "data.item_column", path)
    counted = cfg.values == "count" and count_col is not None
    ct_idx = _index(names, count_col, "data.count_column", path) if counted else None
    group = names.index(EBIRD_GROUP) if cfg.event_column is None and ebird and EBIRD_GROUP in names else None
    filters = _filters(flt, names, path, strict=True)

    # every event: from the events file (zero-filling), else those that have records
    events: dict[str, dict[str, float]] = {}
    restrict = False
    if cfg.events_path is not None:
        epath = Path(cfg.events_path)
        if not epath.is_file():
            raise DataError(f"{epath}: data.events_path is not a file")
        enames, erows, _ = read_csv(epath, True if cfg.header is None else cfg.header)
        e_idx = [_index(enames, c, "data.event_column", epath) for c in event_cols]
        e_group = enames.index(EBIRD_GROUP) if group is not None and EBIRD_GROUP in enames else None
        e_filters = _filters(flt, enames, epath, strict=False)
        for row in erows:
            if all(row[i].strip() in ok for i, ok in e_filters):
                events.setdefault(_event_key(row, e_idx, e_group), {})
        restrict = True

    kept = x_cells = no_item = 0
    for r, row in enumerate(rows):
        if not all(row[i].strip() in ok for i, ok in filters):
            continue
        key = _event_key(row, ev_idx, group)
        if restrict and key not in events:
            continue
        item = row[it_idx].strip()
        if not item:
            no_item += 1
            events.setdefault(key, {})
            continue
        value = 1.0
        if ct_idx is not None:
            cell = row[ct_idx].strip()
            if cell.upper() == "X":
                x_cells += 1
            else:
                try:
                    value = float(cell)
                except ValueError:
                    raise DataError(
                        f"{path}: line {r + 1 + int(header)}, column {count_col!r}: {cell[:40]!r} is not a count "
                        "(numbers, or X for present)"
                    ) from None
                if value < 0:
                    raise DataError(f"{path}: line {r + 1 + int(header)}, column {count_col!r}: negative count")
        bag = events.setdefault(key, {})
        bag[item] = bag.get(item, 0.0) + value
        kept += 1
    if not events:
        raise DataError(f"{path}: no records left after data.filter={flt}")
    keys = list(events)
    if cfg.num_samples is not None:
        keys = keys[: cfg.num_samples]
    bags = [events[k] for k in keys]
    meta = {
        "file": str(path),
        "event_column": event_cols if len(event_cols) > 1 else event_cols[0],
        "item_column": item_col,
        "count_column": count_col if counted else None,
        "values": cfg.values,
        "filter": {k: v for k, v in flt.items()},
        "events": len(bags),
        "records": kept,
        "events_without_records": sum(not b for b in bags),
    }
    if group is not None:
        meta["shared_checklists_collapsed_by"] = EBIRD_GROUP
    if cfg.events_path is not None:
        meta["events_path"] = str(cfg.events_path)
    if x_cells:
        meta["x_counted_as_1"] = x_cells
    if no_item:
        meta["records_without_item"] = no_item
    note = f"{path.name}, {len(bags)} events × {item_col}, {cfg.values}"
    min_count = max(cfg.min_count, cfg.min_item_events)
    return bag_bundle("records", bags, cfg, seed, min_count, note, meta, counts=cfg.values == "count", item_key="items")
