"""Data sources selected by ``conf/data/``: built-in synthetic regression and inline rows.

Each source returns a ``Dataset`` of float32 inputs and targets; ``split`` turns it into the
train and validation tensors the data module serves.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from microtrain import validate
from microtrain.errors import DataError


@dataclass
class Dataset:
    x: torch.Tensor  # (rows, features) float32
    y: torch.Tensor  # (rows, outputs) float32, or (rows,) int64 class labels
    truth: dict[str, Any] = field(default_factory=dict)  # the generating parameters, when known


@dataclass
class Splits:
    train: tuple[torch.Tensor, torch.Tensor]
    val: Optional[tuple[torch.Tensor, torch.Tensor]]


def load(cfg: Mapping[str, Any]) -> Dataset:
    name = validate.choice(cfg.get("name"), "data.name", ("synthetic", "inline"))
    return synthetic(cfg) if name == "synthetic" else inline(cfg)


def synthetic(cfg: Mapping[str, Any]) -> Dataset:
    """y = x·Aᵀ + b + noise, with x, A and b drawn from N(0, 1) by the data's own seed."""
    n = validate.integer(cfg.get("n_samples"), "data.n_samples", minimum=2)
    d_in = validate.integer(cfg.get("n_features"), "data.n_features", minimum=1)
    d_out = validate.integer(cfg.get("n_outputs"), "data.n_outputs", minimum=1)
    noise = validate.number(cfg.get("noise"), "data.noise", minimum=0.0)
    seed = validate.integer(cfg.get("seed"), "data.seed")
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=generator)
    bias = torch.randn(d_out, generator=generator)
    x = torch.randn(n, d_in, generator=generator)
    y = x @ weight.T + bias + noise * torch.randn(n, d_out, generator=generator)
    return Dataset(x, y, truth={"weight": weight.tolist(), "bias": bias.tolist()})


def inline(cfg: Mapping[str, Any]) -> Dataset:
    """Rows written in the config, as the notebooks write them: ``data.x=[[1.0],[2.0]] data.y=[[2.0],[4.0]]``."""
    x = _matrix(cfg.get("x"), "data.x")
    y = _matrix(cfg.get("y"), "data.y")
    if len(x) != len(y):
        raise DataError(f"data.x has {len(x)} rows but data.y has {len(y)}; give one target row per input row")
    return Dataset(x, y)


def _matrix(value: Any, key: str) -> torch.Tensor:
    if value is None:
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


def as_class_labels(y: torch.Tensor, source: str) -> torch.Tensor:
    """Integer class labels 0..k-1 for cross-entropy, from a one-column target."""
    if y.dim() == 2 and y.shape[1] != 1:
        raise DataError(f"{source}: cross_entropy needs one column of class labels, got {y.shape[1]} target columns")
    flat = y.reshape(-1)
    if not torch.equal(flat, flat.round()) or (flat < 0).any():
        raise DataError(
            f"{source}: loss=cross_entropy needs integer class labels 0, 1, 2, ... but the targets hold "
            "other values; use a regression loss such as loss=mse"
        )
    return flat.long()


def split(data: Dataset, val_fraction: float, seed: int) -> Splits:
    """Hold out ``val_fraction`` of the rows, chosen by ``seed``; 0 keeps every row for training."""
    n = len(data.x)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and (n_val < 1 or n - n_val < 1):
        raise DataError(
            f"data.val_fraction={val_fraction} of {n} rows leaves an empty split; use more rows or data.val_fraction=0"
        )
    if n_val == 0:
        return Splits((data.x, data.y), None)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    return Splits((data.x[train], data.y[train]), (data.x[val], data.y[val]))
