"""Tables (source ``table``): CSV/TSV, Parquet, NumPy ``.npy``/``.npz`` and ARFF files as ``(N, D)`` float32 rows.

Reading: CSV/TSV with or without a header (``data.header``, sniffed by default) and a sniffed delimiter (``,``,
tab, ``;`` or ``|``; ``.tsv`` is always tab-separated, and tab-separated files are read without quote handling,
as the eBird files need); Parquet through pyarrow (or pandas); ``.npy`` (2-D, or 1-D as one column) and ``.npz``
(``data.column`` names the array, default ``x`` or the only one); ARFF with dense and sparse (``{i v, ...}``)
rows, nominal attributes as their numeric value (or their index when not numeric).

Gzipped text (``.csv.gz``, ``.tsv.gz``, ``.txt.gz``, ``.arff.gz``) is read directly. Two columns with one name
are an error naming them.

Then (`build_table`: reading, validating, assembling): ``data.columns`` keeps columns (names, indices, ranges
``"3:177"``, globs ``"label_*"``, regexes ``"re:..."``; see `expand_columns`), ``data.id_column`` drops one; a
seeded ``data.split`` / ``data.val_fraction`` split, or ``data.test_path`` as the test split; infinite values are
an error; missing cells (empty, ``NA``, ``NaN``, ``null``, ``?``) are an error naming row and column unless
``data.impute`` fills them (training-split column mean, or 0); ``data.scale`` divides every value;
``data.normalize`` scales each column with statistics of the TRAINING split only; ``data.shape`` turns each row
into an image (or clip) whose values must lie in [0, 1]. ``info.meta`` keeps the column names, the value kind and
the statistics (see `table_meta`).

Value kind (``info.meta["kind"]``, ``data.kind`` or detected): ``binary`` (every value 0 or 1), ``count``
(non-negative integers) or ``continuous``. ``info.meta["likelihood"]`` is the matching default reconstruction
likelihood: ``bce`` for binary data that is not normalised, else ``gaussian``.

The CSV helpers here (`sniff_csv`, `read_csv`) are shared with the ``tags`` and ``records`` sources.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from vaekit.config.schema import DataConfig
from vaekit.data.base import ArraySource, DataBundle, DataError, DataInfo, data_file, describe, split_three
from vaekit.data.common import fit_normalize, three_sources
from vaekit.errors import ConfigError

MISSING = {"", "na", "nan", "null", "none", "?", "n/a"}
TABLE_EXTENSIONS = {".csv", ".tsv", ".txt", ".parquet", ".pq", ".npy", ".npz", ".arff"}
"""Also ``.csv.gz``, ``.tsv.gz``, ``.txt.gz`` and ``.arff.gz`` (read through gzip)."""


def table_ext(path: Path) -> str:
    """The format suffix of ``path``, lower case, under a ``.gz`` (``x.tsv.gz`` → ``.tsv``)."""
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return suffixes[-1] if suffixes else ""


def open_text(path: Path, encoding: str, errors: str) -> IO[str]:
    """``path`` opened for reading text; a ``.gz`` file is decompressed on the fly."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors=errors, newline="")
    return path.open(encoding=encoding, errors=errors, newline="")


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
    if table_ext(path) == ".tsv":
        return CsvFormat("\t", csv.QUOTE_NONE)
    try:
        with open_text(path, "utf-8", "replace") as fh:
            sample = fh.read(sample_bytes)
    except (OSError, EOFError) as e:  # EOFError: a truncated .gz
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
        with open_text(path, "utf-8-sig", "strict") as fh:
            rows = [r for r in csv.reader(fh, delimiter=fmt.delimiter, quoting=fmt.quoting) if r]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
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
        with open_text(path, "utf-8", "replace") as fh:
            lines = fh.read().splitlines()
    except (OSError, EOFError) as e:
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
    if np.iscomplexobj(arr):
        raise DataError(
            f"{path}: complex values (dtype {arr.dtype}); store real numbers (e.g. the magnitude, or the real and "
            "imaginary parts as separate columns)"
        )
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
    """Read the file at ``path`` into column names and raw cells (or a float array for NumPy files).

    Raises:
        DataError: naming the file when it cannot be read or two columns share a name.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data.path is not a file")
    ext = table_ext(path)
    if ext in (".npy", ".npz"):
        arr = _read_numpy(path, cfg.column)
        return [str(i) for i in range(arr.shape[1])], arr, None, False
    if ext in (".parquet", ".pq"):
        names, rows = _read_parquet(path)
        header = True
    elif ext == ".arff":
        names, rows = read_arff(path)
        header = True
    else:
        names, rows, header = read_csv(path, cfg.header)
    if header:
        _check_unique(names, path)
    return names, np.empty(0), rows, header


def _check_unique(names: list[str], path: Path) -> None:
    seen: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        seen.setdefault(n, []).append(i)
    dup = {n: ix for n, ix in seen.items() if len(ix) > 1}
    if dup:
        shown = "; ".join(f"{n!r} at columns {', '.join(map(str, ix))}" for n, ix in list(dup.items())[:5])
        raise DataError(
            f"{path}: duplicate column names ({shown}); rename them so each column has its own name "
            "(or read without names: data.header=false)"
        )


def column_index(names: list[str], key: str | int, setting: str) -> int:
    """The index of column ``key`` (a name, or a 0-based index); ConfigError naming ``setting`` otherwise."""
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit() and key not in names):
        i = int(key)
        if not 0 <= i < len(names):
            raise ConfigError(f"{setting}: column index {i} out of range (the table has {len(names)} columns)")
        return i
    if key in names:
        return names.index(key)
    raise ConfigError(f"{setting}: no column {key!r}; the columns are: {_shown(names)}")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:40]) + (f", … {len(names) - 40} more" if len(names) > 40 else "")


_RANGE = re.compile(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*")


def expand_columns(names: list[str], spec: str | int, setting: str = "data.columns") -> list[int]:
    """The column indices one ``data.columns`` entry selects, in table order.

    An entry is an exact name (always wins), a 0-based index, a range ``"a:b"`` (Python slice semantics:
    ``"3:177"``, ``"1:"``, ``":-1"``), a glob (``"label_*"``: ``*``, ``?``, ``[..]``) or a regular expression
    ``"re:..."`` matching the whole name. ConfigError naming ``setting`` when it selects nothing.
    """
    if isinstance(spec, int) or spec in names:
        return [column_index(names, spec, setting)]
    m = _RANGE.fullmatch(spec)
    if m:
        lo, hi = (int(g) if g not in ("", "-") else None for g in m.groups())
        picked = list(range(len(names)))[slice(lo, hi)]
        if not picked:
            raise ConfigError(f"{setting}: range {spec!r} selects no column (the table has {len(names)} columns)")
        return picked
    if spec.startswith("re:"):
        try:
            rx = re.compile(spec[3:])
        except re.error as e:
            raise ConfigError(f"{setting}: {spec!r} is not a valid regular expression ({e})") from None
        picked = [i for i, n in enumerate(names) if rx.fullmatch(n)]
    elif any(c in spec for c in "*?["):
        picked = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, spec)]
    else:
        return [column_index(names, spec, setting)]
    if not picked:
        raise ConfigError(f"{setting}: {spec!r} matches no column; the columns are: {_shown(names)}")
    return picked


def select_columns(names: list[str], cfg: DataConfig) -> list[int]:
    """The kept column indices: ``data.columns`` expanded in order (each column once), minus ``data.id_column``."""
    keep = list(range(len(names)))
    if cfg.columns is not None:
        keep = list(dict.fromkeys(i for spec in cfg.columns for i in expand_columns(names, spec)))
    if cfg.id_column is not None:
        drop = column_index(names, cfg.id_column, "data.id_column")
        keep = [i for i in keep if i != drop]
    if not keep:
        raise ConfigError("data.columns: no column left to use")
    return keep


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




# ------------------------------------------------------------------------------------------- build
@dataclass
class TableRows:
    """One file's kept columns as floats, NaN where a cell is missing."""

    path: Path
    names: list[str]
    """The kept columns' names."""
    x: np.ndarray  # (N, D) float64
    header: bool
    keep: list[int]
    """The kept columns' indices in the file."""
    width: int
    """The file's number of columns."""

    def where(self, r: int) -> str:
        """Row ``r`` as the user finds it: "row 3 (line 4)" when the file has a header line."""
        return f"row {r + 1}" + (f" (line {r + 2})" if self.header else "")


def read_rows(path: Path, cfg: DataConfig, like: TableRows | None = None) -> TableRows:
    """Reading: the kept columns of ``path`` as floats (the first ``data.num_samples`` rows).

    Args:
        like: select the same columns as this file (``data.test_path``): by name when both files have a header,
            else by position (then both files must have as many columns).
    """
    names, arr, rows, header = read_table(path, cfg)
    if like is None:
        keep = select_columns(names, cfg)
    elif header and like.header:
        absent = [n for n in like.names if n not in names]
        if absent:
            raise DataError(f"{path}: data.test_path has no column(s) {_shown(absent)} of data.path {like.path.name}")
        keep = [names.index(n) for n in like.names]
    elif len(names) != like.width:
        raise DataError(f"{path}: data.test_path has {len(names)} columns, data.path {like.path.name} {like.width}")
    else:
        keep = like.keep
    sel = [names[i] for i in keep]
    if rows is not None:
        rows = rows[: cfg.num_samples] if cfg.num_samples is not None else rows
        x = _to_float([[r[i] for i in keep] for r in rows], sel, path, header)
    else:
        x = arr[: cfg.num_samples, keep] if cfg.num_samples is not None else arr[:, keep]
    if len(x) == 0:
        raise DataError(f"{path}: no data rows")
    return TableRows(path, sel, x, header, keep, len(names))


def check_values(t: TableRows, cfg: DataConfig) -> None:
    """Validating: no infinite value; every observed value of ``data.kind`` when it is binary/count; missing
    cells only with ``data.impute``. DataError naming file, row and column."""
    x, missing = t.x, np.isnan(t.x)
    if np.isinf(x).any():
        r, c = map(int, np.argwhere(np.isinf(x))[0])
        raise DataError(
            f"{t.path}: {t.where(r)}, column {t.names[c]!r}: infinite value ({int(np.isinf(x).sum())} in all); "
            "non-finite values are refused (a missing cell is empty, NA or ?)"
        )
    if cfg.kind in ("binary", "count"):
        with np.errstate(invalid="ignore"):
            bad = ~np.isin(x, (0.0, 1.0)) if cfg.kind == "binary" else (x < 0) | (x != np.round(x))
        bad &= ~missing
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"{t.path}: row {r + 1}, column {t.names[c]!r}: {x[r, c]:g} is not a {cfg.kind} value "
                "(data.kind=auto detects the kind)"
            )
    if missing.any() and cfg.impute == "none":
        r, c = map(int, np.argwhere(missing)[0])
        raise DataError(
            f"{t.path}: {t.where(r)}, column {t.names[c]!r}: missing value ({int(missing.sum())} missing cells in "
            "all; set data.impute=mean or data.impute=zero, or leave the column out with data.columns)"
        )


def impute(tables: list[TableRows], train: np.ndarray, cfg: DataConfig) -> dict[str, Any]:
    """Fill missing cells of every table with ``data.impute``'s value fitted on ``tables[0].x[train]``.

    Returns:
        what was done, for ``info.meta`` (empty when nothing was missing).
    """
    n_missing = sum(int(np.isnan(t.x).sum()) for t in tables)
    if not n_missing:
        return {}
    main = tables[0]
    if cfg.impute == "mean":
        with warnings.catch_warnings():  # an all-missing column: reported below
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = np.nanmean(main.x[train], axis=0) if len(train) else np.full(main.x.shape[1], np.nan)
        empty = np.isnan(fill)
        if empty.any():
            raise DataError(
                f"{main.path}: column {main.names[int(np.argmax(empty))]!r} has no value in the training split "
                "(cannot impute its mean; use data.impute=zero or drop it with data.columns)"
            )
    else:
        fill = np.zeros(main.x.shape[1])
    for t in tables:
        t.x = np.where(np.isnan(t.x), fill[None, :], t.x)
    return {"impute": cfg.impute, "imputed_cells": n_missing, "impute_values": [float(v) for v in fill]}


def table_layout(cfg: DataConfig, width: int) -> tuple[str, tuple[int, ...]]:
    """(modality, per-sample shape): ``tabular (D,)``, or with ``data.shape`` an image (C, H, W) / a clip."""
    if cfg.shape is None:
        return "tabular", (width,)
    shape = tuple(cfg.shape) if len(cfg.shape) != 2 else (1, *cfg.shape)
    if math.prod(shape) != width:
        raise ConfigError(
            f"data.shape: {list(cfg.shape)} holds {math.prod(shape)} values per row, but {width} columns are kept "
            "(choose the pixel columns with data.columns, e.g. \"1:\" to leave out a first label column)"
        )
    return ("image" if len(shape) == 3 else "video"), shape


def _check_unit_range(tables: list[TableRows], cfg: DataConfig) -> None:
    lo = min(float(t.x.min()) for t in tables)
    hi = max(float(t.x.max()) for t in tables)
    if lo < 0.0 or hi > 1.0:
        raise ConfigError(
            f"data.shape: images need values in [0, 1], {tables[0].path.name} has [{lo:g}, {hi:g}] after scaling; "
            f"set data.scale={hi:g} (every value divided by it) or data.normalize=minmax"
        )


def build_table(cfg: DataConfig, seed: int) -> DataBundle:
    """The ``table`` source: one numeric table file (plus ``data.test_path``), rows are samples."""
    path = data_file(cfg.path, "table", "a .csv/.tsv/.parquet/.npy/.npz/.arff file (.csv.gz/.tsv.gz too)")
    if cfg.test_path is not None and cfg.split is not None and cfg.split[2] > 0:
        raise ConfigError("data.test_path: the test split is that file; set data.split's test share to 0")
    # reading
    tables = [read_rows(path, cfg)]
    if cfg.test_path is not None:
        tables.append(read_rows(data_file(cfg.test_path, "table", "the test file"), cfg, like=tables[0]))
    main = tables[0]
    modality, shape = table_layout(cfg, main.x.shape[1])
    # validating
    for t in tables:
        check_values(t, cfg)
    # the kind of the observed values (before imputation: a mean-filled count column is still counts)
    kind = detect_kind(main.x) if cfg.kind == "auto" else cfg.kind
    # assembling: split, then everything fitted on the training split only
    tr, va, te = (i.numpy() for i in split_three(len(main.x), cfg.split, cfg.val_fraction, seed))
    if len(tr) == 0 and cfg.normalize != "none":
        raise ConfigError(f"data.normalize={cfg.normalize}: needs training rows (data.split's train share is 0)")
    extra: dict[str, Any] = {"file": str(path), "rows": len(main.x), **impute(tables, tr, cfg)}
    if cfg.scale is not None:
        for t in tables:
            t.x = t.x / cfg.scale
        extra["scale"] = cfg.scale
    stats, apply = fit_normalize(main.x, tr, cfg.normalize)
    for t in tables:
        t.x = apply(t.x)
    if modality != "tabular":
        _check_unit_range(tables, cfg)
    xt = torch.from_numpy(main.x.astype(np.float32)).view(-1, *shape)  # (N, *shape)
    train, val, test = three_sources(xt, tr, va, te)
    if cfg.test_path is not None:
        test = ArraySource(torch.from_numpy(tables[1].x.astype(np.float32)).view(-1, *shape))
        extra["test_file"] = str(cfg.test_path)
    return _table_bundle(cfg, path, train, val, test, kind, modality, shape, stats, extra, main.names)


def _table_bundle(
    cfg: DataConfig,
    path: Path,
    train: ArraySource,
    val: ArraySource,
    test: ArraySource | None,
    kind: str,
    modality: str,
    shape: tuple[int, ...],
    stats: dict[str, list[float]],
    extra: dict[str, Any],
    names: list[str],
) -> DataBundle:
    n_test = len(test) if test is not None else 0
    if modality == "tabular":
        fit = train.x if len(train) else val.x if len(val) else test.x  # type: ignore[union-attr]
        value_range = (float(fit.min()), float(fit.max()))
    else:
        value_range = (0.0, 1.0)
    meta = table_meta(names, kind, cfg.normalize, stats, extra)
    if modality != "tabular":  # images/clips from pixel columns: the image default likelihood (loss.recon) applies
        meta.pop("likelihood")
        meta["shape"] = list(shape)
    note = f"{path.name}, {kind}" + (f", {cfg.normalize}-normalised" if cfg.normalize != "none" else "")
    note += f", scaled by 1/{cfg.scale:g}" if cfg.scale is not None else ""
    note += f", rows as {modality}s {tuple(shape)}" if modality != "tabular" else ""
    info = DataInfo(
        modality=modality,  # type: ignore[arg-type]
        shape=shape,
        n_train=len(train),
        n_val=len(val),
        n_test=n_test,
        value_range=value_range,
        description=describe("table", len(train), len(val), shape, note, n_test),
        meta=meta,
    )
    return DataBundle(train, val, info, test)
