"""A user's files: that they exist, and NPZ arrays ``x`` and ``y`` (tables are ``data.tables``'s).

Every problem is a DataError naming the file and, where it applies, the entry. Nothing in a data
file is ever executed (NPZ is read with ``allow_pickle=False``).
"""

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from microtrain.errors import DataError


def existing_file(path: Any, key: str = "data.path") -> Path:
    if not path:
        raise DataError(f"{key} is not set; give the file, like {key}=houses.csv")
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file; check {key}")
    return path


def read_npz(path: Path, need_y: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """x and y (for predictions y may be absent: then an empty column)."""
    if not zipfile.is_zipfile(path):  # numpy would read it as a pickle and suggest allow_pickle=True: never for data
        raise DataError(f"{path}: not an .npz archive; write one with numpy.savez(path, x=..., y=...)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or (need_y and "y" not in arrays):
                wanted = "arrays named 'x' and 'y'" if need_y else "an array named 'x'"
                raise DataError(f"{path}: needs {wanted}, found: {', '.join(arrays.files) or 'none'}")
            x = arrays["x"]
            y = arrays["y"] if "y" in arrays else np.zeros((len(x), 1))
    except DataError:
        raise
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npz file ({str(err).splitlines()[0]})") from None
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):  # numpy hands back a member that is no .npy as bytes
        raise DataError(f"{path}: x and y are not arrays numpy.savez wrote; write the file with numpy.savez(path, x=..., y=...)")
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: x and y must be numeric arrays, got {x.dtype} and {y.dtype}")
    for name, array in (("x", x), ("y", y)):
        if np.iscomplexobj(array):  # float() would drop the imaginary part without a word
            raise DataError(f"{path}: {name} is complex ({array.dtype}); give real numbers (e.g. the real and imaginary parts as two columns)")
    if x.ndim not in (1, 2) or y.ndim > 2:  # flattening [rows, a, b] would silently mix its axes into features
        raise DataError(
            f"{path}: x must be rows (one feature) or rows × features and y rows or rows × outputs, got shapes {list(x.shape)} and {list(y.shape)}; "
            "reshape them, e.g. x.reshape(len(x), -1), if that is what you mean"
        )
    if len(x) == 0:
        raise DataError(f"{path}: x has no rows")
    x, y = (a.reshape(len(a), -1) if a.ndim != 2 else a for a in (x, y))  # one feature (or output) as a column
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    for name, array in (("x", x), ("y", y)):
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            raise DataError(f"{path}: {name}[{bad[0][0]}, {bad[0][1]}] is {array[tuple(bad[0])]}; remove or fill non-finite values")
    return x.astype(np.float64), y.astype(np.float64)
