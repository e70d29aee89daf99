"""Tables (source ``table``): CSV/TSV, Parquet, NumPy ``.npy``/``.npz`` and ARFF files as ``(N, D)`` float32 rows.

Reading: CSV/TSV with or without a header (``data.header``, sniffed by default) and a sniffed delimiter (``,``,
tab, ``;`` or ``|``; ``.tsv`` is always tab-separated, and tab-separated files are read without quote handling,
as the eBird files need); Parquet through pyarrow (or pandas); ``.npy`` (2-D, or 1-D as one column) and ``.npz``
(``data.column`` names the array, default ``x`` or the only one); ARFF with dense and sparse (``{i v, ...}``)
rows, nominal attributes as their numeric value (or their index when not numeric).

Then: ``data.columns`` keeps columns (names or 0-based indices), ``data.id_column`` drops one; a seeded
``data.split`` / ``data.val_fraction`` split; missing cells (empty, ``NA``, ``NaN``, ``null``, ``?``) are an error
naming row and column unless ``data.impute`` fills them (training-split column mean, or 0); ``data.normalize``
scales each column with statistics of the TRAINING split only. ``info.meta`` keeps the column names, the value
kind and the statistics (see `table_meta`).

Value kind (``info.meta["kind"]``, ``data.kind`` or detected): ``binary`` (every value 0 or 1), ``count``
(non-negative integers) or ``continuous``. ``info.meta["likelihood"]`` is the matching default reconstruction
likelihood: ``bce`` for binary data that is not normalised, else ``gaussian``.

The CSV helpers here (`sniff_csv`, `read_csv`) are shared with the ``tags`` and ``records`` sources.
"""

from __future__ import annotations

import csv
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaekit.config.schema import DataConfig
from vaekit.data.base import ArraySource, DataBundle, DataError, DataInfo, data_file, describe, split_three
from vaekit.errors import ConfigError

MISSING = {"", "na", "nan", "null", "none", "?", "n/a"}
TABLE_EXTENSIONS = {".csv", ".tsv", ".txt", ".parquet", ".pq", ".npy", ".npz", ".arff"}


# ------------------------------------------------------------------------------------------ CSV / TSV
@dataclass
class CsvFormat:
    """How a delimited text file is read."""

    delimiter: str
    quoting: int


def sniff_csv(path: Path, sample_bytes: int = 65536) -> CsvFormat:
    """The delimiter of a delimited text file: tab for ``.tsv``, else sniffed among ``,`` tab ``;`` ``|``.

    Tab-separated files are read without quote handling (free-text fields in eBird files hold stray quotes).
    """
    if path.suffix.lower() == ".tsv":
        return CsvFormat("\t", csv.QUOTE_NONE)
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            sample = fh.read(sample_bytes)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    first = sample.split("\n", 1)[0]
    try:
        delim = csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        counts = {d: first.count(d) for d in ",\t;|"}
        delim = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    if first.count("\t") > first.count(delim):  # a header line is the most reliable witness for TSV
        delim = "\t"
    return CsvFormat(delim, csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_csv(path: str | Path, header: bool | None = None) -> tuple[list[str], list[list[str]], bool]:
    """Read a delimited text file.

    Args:
        path: the file.
        header: whether the first row holds column names; None sniffs it (a header when some cell of the first
            row is neither a number nor empty).

    Returns:
        (column names, rows of strings, whether there was a header). Without a header the names are ``"0"``,
        ``"1"``, .... Every row has exactly as many cells as there are names.

    Raises:
        DataError: naming the file (and line) when it cannot be read or a row has the wrong number of cells.
    """
    path = Path(path)
    fmt = sniff_csv(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with path.open(encoding="utf-8-sig", errors="strict", newline="") as fh:
            rows = [r for r in csv.reader(fh, delimiter=fmt.delimiter, quoting=fmt.quoting) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as delimited text ({e})") from e
    if not rows:
        raise DataError(f"{path}: empty file")
    if header is None:
        header = any(c.strip().lower() not in MISSING and not _is_number(c) for c in rows[0])
    width = len(rows[0])
    names = [c.strip() for c in rows[0]] if header else [str(i) for i in range(width)]
    body = rows[1:] if header else rows
    for k, r in enumerate(body):
        if len(r) != width:
            if len(r) == width + 1 and r[-1] == "":  # a trailing delimiter (eBird files end lines with a tab)
                r.pop()
                continue
            if len(r) < width and len(r) >= width - 1 and fmt.delimiter == "\t":
                r.extend([""] * (width - len(r)))
                continue
            line = k + 1 + int(header)
            raise DataError(f"{path}: row {line} has {len(r)} cells, the {'header' if header else 'first row'} {width}")
    if header and names and names[-1] == "" and all(len(r) == width and r[-1] == "" for r in body[:100]):
        names, body = names[:-1], [r[:-1] for r in body]  # a trailing delimiter on every line
    return names, body, header


# ------------------------------------------------------------------------------------------------ ARFF
_ATTR = re.compile(r"""@attribute\s+('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)\s+(.*)$""", re.IGNORECASE)


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1].replace("\\'", "'").replace('\\"', '"')
    return s


def read_arff(path: str | Path) -> tuple[list[str], list[list[Any]]]:
    """Read an ARFF file with dense or sparse (``{index value, ...}``) data rows.

    Returns:
        (attribute names, rows as lists of cells): numeric cells as float, ``?`` as None, nominal values as their
        number when every value of the attribute is numeric (``{0,1}`` multi-label columns), else their index;
        string/date attributes as the string. Sparse rows give 0 for omitted values.

    Raises:
        DataError: naming the file and line for malformed headers or rows.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    names: list[str] = []
    nominal: list[dict[str, float] | None] = []
    rows: list[list[Any]] = []
    in_data = False
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@attribute"):
                m = _ATTR.match(line)
                if not m:
                    raise DataError(f"{path}: line {lineno}: malformed @attribute")
                names.append(_unquote(m.group(1)))
                kind = m.group(2).strip()
                if kind.startswith("{"):
                    values = [_unquote(v) for v in next(csv.reader([kind.strip("{} ")], quotechar="'"))]
                    numeric = all(_is_number(v) for v in values)
                    nominal.append({v: float(v) if numeric else float(k) for k, v in enumerate(values)})
                else:
                    nominal.append(None)
            elif low.startswith("@data"):
                in_data = True
            continue
        if line.startswith("{"):
            row: list[Any] = [0.0] * len(names)
            body = line.strip("{}").strip()
            for part in body.split(",") if body else []:
                bits = part.strip().split(None, 1)
                if len(bits) != 2 or not bits[0].isdigit() or int(bits[0]) >= len(names):
                    raise DataError(f"{path}: line {lineno}: malformed sparse entry {part.strip()!r}")
                i = int(bits[0])
                row[i] = _arff_cell(bits[1], nominal[i], path, lineno, names[i])
        else:
            cells = next(csv.reader([line], quotechar="'", skipinitialspace=True))
            if len(cells) != len(names):
                raise DataError(f"{path}: line {lineno} has {len(cells)} values, {len(names)} attributes declared")
            row = [_arff_cell(c, nominal[i], path, lineno, names[i]) for i, c in enumerate(cells)]
        rows.append(row)
    if not names:
        raise DataError(f"{path}: no @attribute lines (not an ARFF file?)")
    return names, rows


def _arff_cell(cell: str, nominal: dict[str, float] | None, path: Path, lineno: int, name: str) -> Any:
    cell = _unquote(cell)
    if cell == "?":
        return None
    if nominal is not None:
        if cell not in nominal:
            raise DataError(f"{path}: line {lineno}, attribute {name!r}: {cell!r} is not one of its nominal values")
        return nominal[cell]
    return float(cell) if _is_number(cell) else cell


# ------------------------------------------------------------------------------------ other formats
def _read_parquet(path: Path) -> tuple[list[str], list[list[Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        try:
            table = pq.read_table(str(path))
        except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError family
            raise DataError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from e
        cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return list(table.column_names), [list(r) for r in zip(*cols, strict=True)]
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError(f"data.path: {path} is Parquet; install pyarrow to read it (pip install pyarrow)") from None
    try:
        df = pd.read_parquet(path)
    except ImportError:
        raise ConfigError(f"data.path: {path} is Parquet; install pyarrow to read it (pip install pyarrow)") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from e
    return [str(c) for c in df.columns], df.to_numpy(dtype=object).tolist()


def _read_numpy(path: Path, array: str | None) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read NumPy file ({e})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            key = array or ("x" if "x" in keys else keys[0] if len(keys) == 1 else None)
            if key not in keys:
                raise ConfigError(
                    f"data.column: name the array of {path} to read (it holds {', '.join(keys) or 'nothing'})"
                )
            arr = loaded[key]
    else:
        arr = loaded
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{path}: a table must be 2-D (rows, columns); this array is {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{path}: array of dtype {arr.dtype}, expected numbers")
    return arr.astype(np.float64)


def _to_float(cells: list[list[Any]], names: list[str], path: Path, header: bool) -> np.ndarray:
    """Rows of cells → (N, D) float64 with NaN for missing cells; DataError naming row and column otherwise."""
    out = np.empty((len(cells), len(names)), dtype=np.float64)
    for r, row in enumerate(cells):
        for c, v in enumerate(row):
            if v is None:
                out[r, c] = math.nan
            elif isinstance(v, bool | int | float | np.number):
                out[r, c] = float(v)
            else:
                s = str(v).strip()
                if s.lower() in MISSING:
                    out[r, c] = math.nan
                    continue
                try:
                    out[r, c] = float(s)
                except ValueError:
                    where = f"row {r + 1}" + (f" (line {r + 2})" if header else "")
                    raise DataError(
                        f"{path}: {where}, column {names[c]!r}: {s[:40]!r} is not a number "
                        "(choose numeric columns with data.columns=[...])"
                    ) from None
    return out


def read_table(path: str | Path, cfg: DataConfig) -> tuple[list[str], np.ndarray, list[list[Any]] | None, bool]:
    """Read the file at ``path`` into column names and raw cells (or a float array for NumPy files)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data.path is not a file")
    ext = path.suffix.lower()
    if ext in (".npy", ".npz"):
        arr = _read_numpy(path, cfg.column)
        return [str(i) for i in range(arr.shape[1])], arr, None, False
    if ext in (".parquet", ".pq"):
        names, rows = _read_parquet(path)
        return names, np.empty(0), rows, False
    if ext == ".arff":
        names, rows = read_arff(path)
        return names, np.empty(0), rows, False
    names, rows, header = read_csv(path, cfg.header)
    return names, np.empty(0), rows, header


def column_index(names: list[str], key: str | int, setting: str) -> int:
    """The index of column ``key`` (a name, or a 0-based index); ConfigError naming ``setting`` otherwise."""
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit() and key not in names):
        i = int(key)
        if not 0 <= i < len(names):
            raise ConfigError(f"{setting}: column index {i} out of range (the table has {len(names)} columns)")
        return i
    if key in names:
        return names.index(key)
    shown = ", ".join(names[:40]) + (f", … {len(names) - 40} more" if len(names) > 40 else "")
    raise ConfigError(f"{setting}: no column {key!r}; the columns are: {shown}")


def detect_kind(x: np.ndarray) -> str:
    """``binary`` (all finite values in {0, 1}), ``count`` (non-negative integers) or ``continuous``."""
    v = x[np.isfinite(x)]
    if v.size and np.isin(v, (0.0, 1.0)).all():
        return "binary"
    if v.size and (v >= 0).all() and (v == np.round(v)).all():
        return "count"
    return "continuous"


def table_meta(
    names: list[str], kind: str, normalize: str, stats: dict[str, list[float]], extra: dict[str, Any]
) -> dict[str, Any]:
    """``info.meta`` of a table: ``columns``, ``kind``, ``likelihood``, ``normalize`` and its statistics."""
    likelihood = "bce" if kind == "binary" and normalize == "none" else "gaussian"
    return {"columns": names, "kind": kind, "likelihood": likelihood, "normalize": normalize, **stats, **extra}


def build_table(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``table`` source: one numeric table file, rows are samples."""
    path = data_file(cfg.path, "table", "a .csv/.tsv/.parquet/.npy/.npz/.arff file")
    names, arr, rows, header = read_table(path, cfg)

    keep = list(range(len(names)))
    if cfg.columns is not None:
        keep = [column_index(names, c, "data.columns") for c in cfg.columns]
    if cfg.id_column is not None:
        drop = column_index(names, cfg.id_column, "data.id_column")
        keep = [i for i in keep if i != drop]
    if not keep:
        raise ConfigError("data.columns: no column left to use")
    sel_names = [names[i] for i in keep]
    if rows is not None:
        if cfg.num_samples is not None:
            rows = rows[: cfg.num_samples]
        x = _to_float([[r[i] for i in keep] for r in rows], sel_names, path, header)
    else:
        x = arr[: cfg.num_samples, keep] if cfg.num_samples is not None else arr[:, keep]
    if len(x) == 0:
        raise DataError(f"{path}: no data rows")
    if np.isinf(x).any():
        r, c = map(int, np.argwhere(np.isinf(x))[0])
        raise DataError(f"{path}: row {r + 1}, column {sel_names[c]!r}: infinite value")

    tr, va, te = (i.numpy() for i in split_three(len(x), cfg.split, cfg.val_fraction, seed))
    missing = np.isnan(x)
    # the kind of the observed values (before imputation: a mean-filled count column is still counts)
    kind = detect_kind(x) if cfg.kind == "auto" else cfg.kind
    if cfg.kind in ("binary", "count"):
        with np.errstate(invalid="ignore"):
            bad = ~np.isin(x, (0.0, 1.0)) if cfg.kind == "binary" else (x < 0) | (x != np.round(x))
        bad &= ~missing
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"{path}: row {r + 1}, column {sel_names[c]!r}: {x[r, c]:g} is not a {cfg.kind} value "
                "(data.kind=auto detects the kind)"
            )
    extra: dict[str, Any] = {"file": str(path), "rows": len(x)}
    if missing.any():
        if cfg.impute == "none":
            r, c = map(int, np.argwhere(missing)[0])
            where = f"row {r + 1}" + (f" (line {r + 2})" if header else "")
            raise DataError(
                f"{path}: {where}, column {sel_names[c]!r}: missing value ({int(missing.sum())} missing cells in "
                "all; set data.impute=mean or data.impute=zero, or leave the column out with data.columns)"
            )
        if cfg.impute == "mean":
            with warnings.catch_warnings():  # an all-missing column: reported below
                warnings.simplefilter("ignore", RuntimeWarning)
                fill = np.nanmean(x[tr], axis=0)
            empty = np.isnan(fill)
            if empty.any():
                raise DataError(
                    f"{path}: column {sel_names[int(np.argmax(empty))]!r} has no value in the training split "
                    "(cannot impute its mean; use data.impute=zero or drop it with data.columns)"
                )
        else:
            fill = np.zeros(x.shape[1])
        x = np.where(missing, fill[None, :], x)
        extra["impute"] = cfg.impute
        extra["imputed_cells"] = int(missing.sum())
        extra["impute_values"] = [float(v) for v in fill]

    stats: dict[str, list[float]] = {}
    if cfg.normalize == "standard":
        mean, std = x[tr].mean(axis=0), x[tr].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        x = (x - mean) / std
        stats = {"mean": mean.tolist(), "std": std.tolist()}
    elif cfg.normalize == "minmax":
        lo, hi = x[tr].min(axis=0), x[tr].max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        x = (x - lo) / span
        stats = {"min": lo.tolist(), "max": hi.tolist()}

    xt = torch.from_numpy(x.astype(np.float32))
    train, val = ArraySource(xt[tr]), ArraySource(xt[va])
    test = ArraySource(xt[te]) if len(te) else None
    shape = (x.shape[1],)
    lo, hi = float(xt[tr].min()), float(xt[tr].max())
    note = f"{path.name}, {kind}" + (f", {cfg.normalize}-normalised" if cfg.normalize != "none" else "")
    info = DataInfo(
        modality="tabular",
        shape=shape,
        n_train=len(tr),
        n_val=len(va),
        n_test=len(te),
        value_range=(lo, hi),
        description=describe("table", len(tr), len(va), shape, note, len(te)),
        meta=table_meta(sel_names, kind, cfg.normalize, stats, extra),
    )
    return DataBundle(train, val, info, test)
