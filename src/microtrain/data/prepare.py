"""The data of a run: loaded, labelled, split and standardized, with what was done saved as
``data_info.json`` (``predict.py`` applies the same standardization to new rows)."""

from typing import Any, cast

from omegaconf import DictConfig

import torch

from microtrain import losses
from microtrain.data import tables
from microtrain.data.tables import Columns
from microtrain.errors import DataError
from microtrain.data.sources import Dataset, Pair, load
from microtrain.data.splits import Splits, Standardizer, as_class_labels, check_classes_seen_in_training, split


def prepare_data(cfg: DictConfig) -> tuple[Dataset, Splits, dict[str, Any]]:
    """Load, label, split and standardize the data; describe what was done in ``info``."""
    classify = losses.is_classification(cfg.loss)
    dataset = load(cfg.data, classify)
    if classify:
        dataset.y = as_class_labels(dataset.y, dataset.source)
        if len(set(dataset.y.reshape(-1).tolist())) < 2:
            raise DataError(
                f"{dataset.source}: every row has the same class, so there is nothing to classify; "
                "give rows of at least two classes, or a regression loss"
            )
    splits = split(
        dataset,
        cfg.data.val_fraction,
        cfg.data.test_fraction,
        cfg.data.split_seed,
    )
    if classify:
        check_classes_seen_in_training(splits, dataset.source)
    columns = dataset.columns
    if columns is not None and columns.missing == "mean":
        splits = _impute(splits, columns, dataset.source)
    info: dict[str, Any] = {
        "source": dataset.source,
        "features": dataset.features or [f"x{i}" for i in range(dataset.x.shape[1])],
        "targets": dataset.targets or [f"y{i}" for i in range(1 if classify else dataset.y.shape[1])],
        "task": "classification" if classify else "regression",
        "n_outputs": int(dataset.y.max()) + 1 if classify else dataset.y.shape[1],
        "rows": {k: 0 if p is None else len(p[0]) for k, p in vars(splits).items()},
        "standardize": None,
        "columns": None if columns is None else columns.to_json(),
        "classes": None if columns is None else columns.classes,
    }
    if cfg.data.standardize:
        scaler = Standardizer.fit(splits.train[0])
        info["constant_features"] = [info["features"][i] for i in scaler.constant(splits.train[0])]
        splits = scaler.apply(splits)
        info["standardize"] = {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}
    info["standardize_targets"] = None
    if cfg.data.standardize_targets and not classify:
        # raw targets such as prices (~1e5) make SGD diverge at any usual learning rate
        scaler = Standardizer.fit(splits.train[1])
        splits = scaler.apply(splits, targets=True)
        info["standardize_targets"] = {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}
    return dataset, splits, info


def _impute(splits: Splits, columns: Columns, source: str) -> Splits:
    """data.missing=mean: every split's missing cells get the training split's feature means."""
    means = torch.nanmean(splits.train[0].double(), dim=0)
    empty = [name for name, mean in zip(columns.features, means.tolist()) if mean != mean]
    if empty:
        raise DataError(f"{source}: column {empty[0]!r} has no value in the training split to take a mean of")
    columns.means = means.tolist()
    fill = lambda pair: None if pair is None else (tables.fill(pair[0], columns.means), pair[1])  # noqa: E731
    return Splits(cast(Pair, fill(splits.train)), fill(splits.val), fill(splits.test))


def describe(info: dict[str, Any]) -> str:
    """What the run trains on, printed at its start: features, target, task, and what was dropped."""

    def shown(names: list[Any], most: int = 8) -> str:  # 256 targets are not one line
        return ", ".join(map(str, names[:most])) + (f", ... ({len(names)} in all)" if len(names) > most else "")

    features = info["features"]
    task = info["task"] + (f", classes {shown(info['classes'], 10)}" if info.get("classes") else "")
    line = f"data: {info['source']}, {len(features)} features ({shown(features)}); target {shown(info['targets'], 10)} ({task})"
    dropped = (info.get("columns") or {}).get("dropped") or {}
    if dropped:
        line += "; dropped " + "; ".join(f"{name} ({why})" for name, why in dropped.items())
    if rows := (info.get("columns") or {}).get("dropped_rows"):
        empty = "target" if info["columns"]["missing"] == "mean" else "cell"  # mean fills features: only a missing target drops a row
        line += f"; {rows} row{'s' if rows > 1 else ''} with an empty {empty} left out (data.missing={info['columns']['missing']})"
    if info.get("constant_features"):
        line += (
            f"; constant in the training split, so all zeros once standardized: {', '.join(info['constant_features'])} (nothing to learn from them)"
        )
    return line
