"""Read a user's table: CSV with a header row, or NPZ with arrays ``x`` and ``y``.

Every problem is a DataError naming the file and, where it applies, the row and column. Nothing
in a data file is ever executed (NPZ is read with ``allow_pickle=False``).
"""

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from microtrain.errors import DataError


def existing_file(path: Any, key: str = "data.path") -> Path:
    if not path:
        raise DataError(f"{key} is not set; give the file, like {key}=houses.csv")
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file; check {key}")
    return path


def read_csv_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows of cells); checks the file is non-empty, has a header and even rows."""
    try:
        with open(path, newline="") as handle:
            lines = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from None
    lines = [row for row in lines if any(cell.strip() for cell in row)]
    if not lines:
        raise DataError(f"{path}: the file is empty; it needs a header row and data rows")
    header, rows = [c.strip() for c in lines[0]], lines[1:]
    if not rows:
        raise DataError(f"{path}: only a header row, no data rows")
    if all(_is_number(c) for c in header):
        raise DataError(f"{path}: the first row is all numbers; add a header row naming the columns")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {number} has {len(row)} cells but the header has {len(header)}")
    return header, rows


def csv_columns(path: Path, target: Any, features: Optional[Sequence[str]]) -> tuple[list[str], list[str]]:
    """The feature and target column names: features default to every other numeric column."""
    header, rows = read_csv_table(path)
    targets = [target] if isinstance(target, str) else list(target or [])
    if not targets:
        raise DataError(f"{path}: data.target is not set; name the target column(s), e.g. data.target={header[-1]}")
    for name in targets + list(features or []):
        if name not in header:
            raise DataError(f"{path}: no column {name!r}; the columns are: {', '.join(header)}")
    if features is None:
        features = [h for i, h in enumerate(header) if h not in targets and _numeric_column(rows, i)]
    if not features:
        raise DataError(f"{path}: no numeric feature columns besides the target; set data.features")
    return list(features), targets


def read_csv_matrix(path: Path, columns: Sequence[str]) -> np.ndarray:
    """The named columns as float64, refusing any cell that is not a finite number."""
    header, rows = read_csv_table(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; the columns are: {', '.join(header)}")
    index = [header.index(c) for c in columns]
    out = np.empty((len(rows), len(columns)))
    for r, row in enumerate(rows):
        for c, i in enumerate(index):
            out[r, c] = _cell(row[i], path, r + 2, columns[c])
    return out


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise DataError(f"{path}: needs arrays named 'x' and 'y', found: {', '.join(arrays.files) or 'none'}")
            x, y = arrays["x"], arrays["y"]
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npz file ({str(err).splitlines()[0]})") from None
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: x and y must be numeric arrays, got {x.dtype} and {y.dtype}")
    x = x.reshape(len(x), -1) if x.ndim != 2 else x
    y = y.reshape(len(y), -1) if y.ndim != 2 else y
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    for name, array in (("x", x), ("y", y)):
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            raise DataError(f"{path}: {name}[{bad[0][0]}, {bad[0][1]}] is {array[tuple(bad[0])]}; remove or fill non-finite values")
    return x.astype(np.float64), y.astype(np.float64)


def _cell(text: str, path: Path, row: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        shown = text if text.strip() else "empty"
        raise DataError(f"{path}: row {row}, column {column!r}: {shown!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: row {row}, column {column!r}: {text.strip()} is not finite; remove or fill it")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _numeric_column(rows: list[list[str]], index: int) -> bool:
    """A column is numeric unless none of its cells is a number (a text column such as a name)."""
    return any(_is_number(row[index]) for row in rows)

