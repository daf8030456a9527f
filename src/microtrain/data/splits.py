"""The train/validation/test split, class labels and standardization (training split only)."""

from dataclasses import dataclass
from typing import Optional, cast

import torch

from microtrain.data.sources import Dataset, Pair
from microtrain.errors import DataError


@dataclass
class Splits:
    train: Pair
    val: Optional[Pair]
    test: Optional[Pair] = None


def as_class_labels(y: torch.Tensor, source: str) -> torch.Tensor:
    """Integer class labels 0..k-1 for cross-entropy, from a one-column target."""
    if y.dim() == 2 and y.shape[1] != 1:
        raise DataError(f"{source}: cross_entropy needs one column of class labels, got {y.shape[1]} target columns")
    flat = y.reshape(-1)
    bad = ((flat != flat.round()) | (flat < 0)).nonzero()
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"{source}: loss=cross_entropy needs integer class labels 0, 1, 2, ... but row {row} (counting from 0) holds "
            f"{flat[row].item():g}; use a regression loss such as loss=mse"
        )
    return flat.long()


def split(data: Dataset, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Shuffle the rows with ``seed`` and hold out validation and test rows; 0 keeps none."""
    n = len(data.x)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    for fraction, count, key in ((val_fraction, n_val, "val_fraction"), (test_fraction, n_test, "test_fraction")):
        if fraction > 0 and count < 1:
            raise DataError(f"{data.source}: data.{key}={fraction} of {n} rows is less than one row; use more rows or data.{key}=0")
    if n - n_val - n_test < 1:
        raise DataError(
            f"{data.source}: {n} rows are too few for val_fraction={val_fraction} and test_fraction={test_fraction}; lower them or give more rows"
        )
    if n_val == n_test == 0:
        return Splits((data.x, data.y), None, None)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    take = lambda rows: (data.x[rows], data.y[rows]) if len(rows) else None  # noqa: E731
    return Splits(cast(Pair, take(train)), take(val), take(test))  # train has a row or more (checked above)


def check_classes_seen_in_training(splits: Splits, source: str) -> None:
    seen = set(splits.train[1].unique().tolist())
    for name, pair in (("validation", splits.val), ("test", splits.test)):
        if pair is not None and (unseen := set(pair[1].unique().tolist()) - seen):
            raise DataError(
                f"{source}: the {name} split has class(es) {sorted(unseen)} that the training split never shows; "
                "change data.split_seed or give more rows of those classes"
            )


@dataclass
class Standardizer:
    """Per-feature (x − mean) / std with statistics of the training split only."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardizer":
        """Statistics in float64: squares of values near float32's limit (1e38) would overflow to
        inf and turn the column into NaN. A constant column (std 0) keeps std 1: it becomes all
        zeros, which ``constant`` names so the run can say so."""
        wide = x.double()
        std = wide.std(dim=0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(wide.mean(dim=0).to(x.dtype), std.to(x.dtype))

    def constant(self, x: torch.Tensor) -> list[int]:
        """The columns with one value in the training split: they carry nothing to learn from."""
        return [i for i, same in enumerate((x == x[:1]).all(dim=0).tolist()) if same] if len(x) > 1 else []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x.double() - self.mean.double()) / self.std.double()
        if not torch.isfinite(scaled).all():
            row, column = (int(i) for i in (~torch.isfinite(scaled)).nonzero()[0])
            raise DataError(
                f"standardizing gives a non-finite value at row {row + 1}, column {column + 1} (counting from 1); "
                "rescale that column, or set data.standardize=false"
            )
        return scaled.to(x.dtype)

    def apply(self, splits: Splits, targets: bool = False) -> Splits:
        """Scale the inputs of every split, or with ``targets`` the targets."""
        scale = lambda p: None if p is None else ((p[0], self(p[1])) if targets else (self(p[0]), p[1]))  # noqa: E731
        return Splits(cast(Pair, scale(splits.train)), scale(splits.val), scale(splits.test))
