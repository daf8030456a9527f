"""Data sources selected by ``conf/data/``.

synthetic and inline are built here; csv and npz files are read by ``data.files``; the bundled
real data sets come from scikit-learn (``data.bundled``). Every source returns a ``Dataset`` of
float tensors; ``data.splits`` cuts it into the splits the data module serves.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from microtrain.data import files, tables
from microtrain.data.bundled import load_bundled
from microtrain.errors import DataError

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Dataset:
    x: torch.Tensor  # (rows, features) float32
    y: torch.Tensor  # (rows, outputs) float32, or (rows,) int64 class labels
    source: str  # names the data in error messages: "data=inline" or a file path
    features: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)  # the generating parameters, when known
    columns: Optional[tables.Columns] = None  # a table's column choices (data.tables), saved for predictions


def load(cfg: Mapping[str, Any], classify: bool = False) -> Dataset:
    name = cfg["name"]
    if name == "synthetic":
        return synthetic(cfg)
    if name == "inline":
        return inline(cfg)
    if name == "csv":
        return csv_file(cfg, classify)
    if name == "npz":
        path = files.existing_file(cfg["path"])
        x, y = files.read_npz(path)
        return _dataset(x, y, str(path))
    x, y, features, _task = load_bundled(name)
    return _dataset(x, y, f"data={name}", features, ["target"])


def synthetic(cfg: Mapping[str, Any]) -> Dataset:
    """y = x·Aᵀ + b + noise, with x, A and b drawn from N(0, 1) by the data's own seed."""
    n, d_in, d_out, noise = cfg["n_samples"], cfg["n_features"], cfg["n_outputs"], cfg["noise"]
    generator = torch.Generator().manual_seed(cfg["seed"])
    weight = torch.randn(d_out, d_in, generator=generator)
    bias = torch.randn(d_out, generator=generator)
    x = torch.randn(n, d_in, generator=generator)
    y = x @ weight.T + bias + noise * torch.randn(n, d_out, generator=generator)
    return Dataset(x, y, "data=synthetic", truth={"weight": weight.tolist(), "bias": bias.tolist()})


def inline(cfg: Mapping[str, Any]) -> Dataset:
    """Rows written in the config, as the notebooks write them: ``data.x=[[1.0],[2.0]] data.y=[[2.0],[4.0]]``."""
    x = _matrix(cfg["x"], "data.x")
    y = _matrix(cfg["y"], "data.y")
    for key, values in (("data.x", x), ("data.y", y)):
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):  # refused before training: the divergence guard would blame the learning rate
            row, column = (int(i) for i in bad[0])
            raise DataError(
                f"{key} row {row + 1}, column {column + 1} (counting from 1) is {values[row, column].item()}: "
                "training needs finite numbers; remove or fill it"
            )
    if len(x) != len(y):
        raise DataError(f"data.x has {len(x)} rows but data.y has {len(y)}; give one target row per input row")
    return Dataset(x, y, "data=inline")


def csv_file(cfg: Mapping[str, Any], classify: bool) -> Dataset:
    """A table read by ``data.tables``: its columns chosen, encoded and described in ``columns``."""
    path = files.existing_file(cfg["path"])
    target = cfg["target"]
    targets = [target] if isinstance(target, str) else list(target or [])
    if not targets:
        raise DataError(f"{path}: data.target is not set; name the target column(s), e.g. data.target=price")
    listed = cfg["categorical"]  # listed categories are read as written: "01" and "1" stay two
    table = tables.read(path, cfg["sep"], text_columns=[] if listed in ("auto", "none") else list(listed))
    features = None if cfg["features"] is None else list(cfg["features"])
    categorical = cfg["categorical"] if isinstance(cfg["categorical"], str) else list(cfg["categorical"])
    columns = tables.choose(table, path, targets, features, list(cfg["exclude"] or []), categorical, cfg["missing"])
    x = tables.encode(table, columns, path)
    y = tables.labels(table, targets, path, classify, columns)
    x, y = tables.handle_missing(x, y, table, path, columns, targets)
    dataset = _dataset(x, y, str(path), columns.features, targets)
    dataset.columns = columns
    return dataset


def _dataset(x: np.ndarray, y: np.ndarray, source: str, features: Optional[list[str]] = None, targets: Optional[list[str]] = None) -> Dataset:
    features, targets = features or [f"x{i}" for i in range(x.shape[1])], targets or [f"y{i}" for i in range(y.shape[1])]
    for array, names in ((x, features), (y, targets)):  # finite in float64 (checked on reading), but not in float32: inf in training
        with np.errstate(over="ignore"):
            beyond = np.argwhere(np.isfinite(array) & ~np.isfinite(array.astype(np.float32)))
        if len(beyond):
            row, column = (int(i) for i in beyond[0])
            raise DataError(
                f"{source}: column {names[column]!r} holds {array[row, column]:g}, beyond float32's range (about 3.4e38), in which "
                "microtrain holds data; scale that column down"
            )
    return Dataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), source, features, targets)


def _matrix(value: Any, key: str) -> torch.Tensor:
    if value is None or len(value) == 0:
        raise DataError(f"{key} is empty; give rows like {key}=[[1.0],[2.0]]")
    rows = [list(row) if _is_list(row) else [row] for row in value]
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise DataError(f"{key} has rows of different lengths {sorted(widths)}; every row needs the same number of values")
    try:
        return torch.tensor(rows, dtype=torch.float32)
    except (TypeError, ValueError):
        raise DataError(f"{key} holds a value that is not a number; use numbers only, like {key}=[[1.0],[2.0]]") from None


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig"
