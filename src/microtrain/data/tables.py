"""A user's table (CSV) as model inputs: read with pandas, columns chosen and encoded, and the
choices saved so that ``predict.py`` turns new rows into the same inputs.

pandas reads what spreadsheets write: a UTF-8 byte-order mark, quoted fields, ``NA`` or empty
cells (missing), and any of ``, ; tab |`` as the separator (sniffed; ``data.sep`` forces one).
pandas is imported here only, when a CSV is read: ~0.3 s that other runs do not pay.

The choices (``Columns``): which columns are features, which text columns are one-hot encoded
(``data.categorical``), which are dropped and why, how missing cells are handled
(``data.missing``: error | drop | mean), and the class names of a text label column.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from microtrain.errors import DataError

MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?")
MAX_CATEGORIES = 20  # auto: a text column with at most this many values is categorical


@dataclass
class Columns:
    """What was chosen, saved in data_info.json as ``columns``."""

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> its categories, in order
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why
    classes: Optional[list[str]] = None  # a text label column's classes, by index
    missing: str = "error"
    means: Optional[list[float]] = None  # missing=mean: the training split's feature means
    dropped_rows: int = 0  # rows left out for an empty cell (missing=drop; a row without a target always)

    @property
    def features(self) -> list[str]:
        """The model's inputs: numeric columns, then one per category (``sex=M``)."""
        return self.numeric + [f"{c}={v}" for c, values in self.categorical.items() for v in values]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read(path: Path, sep: Optional[str], text_columns: Sequence[str] = ()) -> Any:
    """The table: columns of numbers as numbers, every other column as its text, stripped, with
    missing cells as NaN; ``text_columns`` (data.categorical, predict.py's copied columns) stay
    text whatever they hold, so "01" and "1" stay two categories and "007" stays 007.

    pandas' C parser, after sniffing the separator from the first lines: a 200 MB table
    (200 000 rows x 50 numeric columns) reads in ~1 s here, where reading every cell as text with
    the sniffing python parser took 11.5 s (5.4 s with the C parser). A table with text columns
    is read a second time with those columns as text (pandas would make True/False booleans)."""
    import csv
    import warnings

    import pandas as pd

    sep, header = _sniffed(path, sep)
    options = {
        "sep": sep,
        "engine": "c",
        "encoding": "utf-8-sig",
        "header": 0,
        "index_col": False,
        "keep_default_na": False,
        "na_values": list(MISSING),
        "skipinitialspace": True,
        "skip_blank_lines": True,
        "low_memory": False,
    }
    text = [c for c in dict.fromkeys(text_columns) if c in header]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a row longer than the header: data lost
            table = pd.read_csv(path, dtype={c: str for c in text} or None, **options)
            words = [c for c in table.columns if c not in text and not _numbers_column(table[c])]
            if words:
                table = pd.read_csv(path, dtype={c: str for c in (*text, *words)}, **options)
    except pd.errors.ParserWarning:
        raise DataError(
            f"{path}: a row has more fields than the header names columns; fix that row, or set data.sep if the separator was sniffed wrong"
        ) from None
    except (UnicodeDecodeError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise DataError(f"{path}: not a readable table ({str(err).strip().splitlines()[0]}); set data.sep if it is not sniffed") from None
    if table.empty:
        raise DataError(f"{path}: only a header row, no data rows")
    table.columns = header
    for name in table.columns:
        if not _numbers_column(table[name]):  # text: stripped, and what reads as missing once stripped is
            cells = table[name].astype(object).where(table[name].notna(), None).str.strip()
            table[name] = cells.mask(cells.isin(MISSING))
    return table


def _numbers_column(cells: Any) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(cells) and not pd.api.types.is_bool_dtype(cells)


def header(path: Path, sep: Optional[str] = None) -> list[str]:
    """The table's column names, read from its first line."""
    return _sniffed(path, sep)[1]


def _sniffed(path: Path, sep: Optional[str]) -> tuple[str, list[str]]:
    """(the separator: data.sep, else sniffed among , ; tab |; the header's column names), checked."""
    import csv

    with open(path, "rb") as handle:
        head = handle.read(65536)
        while head.count(b"\n") < 2 and len(head) < 2**24:  # a header line longer than 64 kB: read on
            more = handle.read(65536)
            if not more:
                break
            head += more
    if not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise DataError(f"{path}: the file is empty; it needs a header row and data rows")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not merely a character cut at the 64 kB boundary
            raise DataError(f"{path}: not a readable table (it is not UTF-8 text: {err.reason}); save it as UTF-8 CSV") from None
        text = head[: err.start].decode("utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if sep is None:
        try:
            sep = csv.Sniffer().sniff("\n".join(lines[:50]), delimiters=",;\t|").delimiter
        except csv.Error:
            sep = ","
    header = [c.strip() for c in next(csv.reader([lines[0]], delimiter=sep))]
    if all(_number(c) for c in header):
        raise DataError(f"{path}: the first row is all numbers; add a header row naming the columns")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"{path}: column {twice[0]!r} appears more than once; give every column its own name")
    if len(lines) < 2:
        raise DataError(f"{path}: only a header row, no data rows")
    return sep, header


def choose(table: Any, path: Path, targets: list[str], features: Optional[list[str]], exclude: list[str], categorical: Any, missing: str) -> Columns:
    """Decide each column's role: target, numeric feature, one-hot feature, or dropped (and why)."""
    for name in [*targets, *(features or []), *exclude]:
        if name not in table.columns:
            raise DataError(f"{path}: no column {name!r}; the columns are: {', '.join(table.columns)}")
    leaked = [t for t in targets if t in (features or []) or t in exclude]
    if leaked:
        raise DataError(f"{path}: {leaked[0]!r} is the target; take it out of data.features and data.exclude")
    listed = [] if categorical in ("auto", "none") else list(categorical)
    for name in listed:  # a typo would silently drop the column meant (a list turns auto off) and encode nothing
        if name not in table.columns or name in targets:
            why = (
                "is the target: the loss decides how it is read"
                if name in targets
                else f"is not a column; the columns are: {', '.join(table.columns)}"
            )
            raise DataError(f"{path}: data.categorical names {name!r}, which {why}")
    columns = Columns(missing=missing)
    for name in table.columns:
        if name in targets:
            continue
        if name in exclude:
            columns.dropped[name] = "data.exclude"
        elif features is not None and name not in features:
            columns.dropped[name] = "not in data.features"
        elif name in listed or (not _numeric(table[name]) and categorical == "auto" and _few(table[name])):
            columns.categorical[name] = sorted(table[name].dropna().unique().tolist())
        elif _numeric(table[name]):  # a stray text cell in it is a mistake, named when encoding
            columns.numeric.append(name)
        elif features is not None:
            raise DataError(f"{path}: column {name!r} holds text; list it in data.categorical to one-hot encode it")
        else:
            distinct = table[name].nunique()
            columns.dropped[name] = f"text with {distinct} distinct values; list it in data.categorical to encode it"
    if not columns.features:
        raise DataError(f"{path}: no feature columns besides the target; set data.features")
    return columns


def encode(table: Any, columns: Columns, path: Path) -> np.ndarray:
    """The feature matrix (rows × features), float64; missing cells are NaN here (see ``fill``)."""
    parts = []
    for name in columns.numeric:
        parts.append(_as_numbers(table[name], path, name)[:, None])
    for name, values in columns.categorical.items():
        cells = table[name]
        unseen = sorted(set(cells.dropna()) - set(values))
        if unseen:
            raise DataError(f"{path}: column {name!r} holds {unseen[0]!r}, a category training never saw (it saw: {', '.join(values)})")
        one_hot = np.stack([(cells == v).to_numpy(dtype=np.float64) for v in values], axis=1)
        one_hot[cells.isna().to_numpy()] = np.nan  # missing, as for a number
        parts.append(one_hot)
    return np.concatenate(parts, axis=1)


def labels(table: Any, targets: list[str], path: Path, classify: bool, columns: Columns) -> np.ndarray:
    """The target matrix; text class labels become classes 0..k−1 (``columns.classes``)."""
    if classify and len(targets) == 1 and not _all_numbers(table[targets[0]]):
        cells = table[targets[0]]
        if columns.classes is None:
            columns.classes = sorted(cells.dropna().unique().tolist())
        index = {name: i for i, name in enumerate(columns.classes)}
        return cells.map(index).to_numpy(dtype=np.float64)[:, None]
    hint = "" if classify else "; a text label is a class: train a classifier with loss=cross_entropy"
    return np.stack([_as_numbers(table[t], path, t, hint) for t in targets], axis=1)


def handle_missing(x: np.ndarray, y: np.ndarray, table: Any, path: Path, columns: Columns, targets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """data.missing: error names the first missing cell; drop removes its rows; mean keeps the
    rows (the training split's means fill them, ``fill``). A row without a target is always an
    error or dropped: there is nothing to learn from it."""
    holes = np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1)
    if not holes.any():
        return x, y
    if columns.missing == "drop" or (columns.missing == "mean" and np.isnan(y).any()):
        keep = ~holes if columns.missing == "drop" else ~np.isnan(y).any(axis=1)
        if not keep.any():  # else the split would say it has 0 rows, not why
            empty = [c for c in [*columns.numeric, *columns.categorical, *targets] if table[c].isna().all()]
            why = (
                f"{', '.join(repr(c) for c in empty)} {'is' if len(empty) == 1 else 'are'} empty in every row"
                if empty
                else "every row has an empty cell"
            )
            way_out = "choose another data.target" if empty and empty[0] in targets else f"leave it out with 'data.exclude=[{(empty or ['...'])[0]}]'"
            raise DataError(f"{path}: data.missing={columns.missing} leaves no row: {why}; fill it, or {way_out}")
        columns.dropped_rows = int((~keep).sum())  # said at the run's start (data.prepare.describe)
        return x[keep], y[keep]
    if columns.missing == "mean":
        return x, y
    row = int(np.argmax(holes))
    name = next(c for c in [*columns.numeric, *columns.categorical, *targets] if table[c].isna().iloc[row])
    raise DataError(f"{path}: row {row + 2}, column {name!r} is empty; fill it, or set data.missing=drop or data.missing=mean")


def fill(x: Any, means: list[float]) -> Any:
    """Missing cells (NaN) get the training split's means; works on tensors and arrays."""
    import torch

    values: Any = torch.as_tensor(means, dtype=x.dtype) if isinstance(x, torch.Tensor) else np.asarray(means)
    holes = x.isnan() if isinstance(x, torch.Tensor) else np.isnan(x)
    return x.where(~holes, values.expand_as(x)) if isinstance(x, torch.Tensor) else np.where(holes, values, x)


def _as_numbers(cells: Any, path: Path, name: str, hint: str = "") -> np.ndarray:
    import pandas as pd

    numbers = pd.to_numeric(cells, errors="coerce")
    bad = numbers.isna() & cells.notna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DataError(f"{path}: row {row + 2}, column {name!r}: {cells.iloc[row]!r} is not a number{hint}")
    values = numbers.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        row = int(np.isinf(values).argmax())
        raise DataError(f"{path}: row {row + 2}, column {name!r}: {cells.iloc[row]} is not finite; remove or fill it")
    return values


def _numeric(cells: Any) -> bool:
    """Most present cells are numbers (a column with none present counts as numeric)."""
    import pandas as pd

    present = cells.dropna()
    return bool(pd.to_numeric(present, errors="coerce").notna().mean() >= 0.5) if len(present) else True


def _all_numbers(cells: Any) -> bool:
    import pandas as pd

    return bool(pd.to_numeric(cells.dropna(), errors="coerce").notna().all())


def _few(cells: Any) -> bool:
    distinct = cells.nunique()
    return distinct <= MAX_CATEGORIES and distinct < max(len(cells) / 2, 2)


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
