"""The data of a run: loaded, labelled, split and standardized, with what was done saved as
``data_info.json`` (``predict.py`` applies the same standardization to new rows)."""

from typing import Any

from omegaconf import DictConfig

from microtrain import losses
from microtrain.data.sources import Dataset, load
from microtrain.data.splits import Splits, Standardizer, as_class_labels, check_classes_seen_in_training, split


def prepare_data(cfg: DictConfig) -> tuple[Dataset, Splits, dict[str, Any]]:
    """Load, label, split and standardize the data; describe what was done in ``info``."""
    dataset = load(cfg.data)
    classify = losses.is_classification(cfg.loss)
    if classify:
        dataset.y = as_class_labels(dataset.y, dataset.source)
    splits = split(
        dataset,
        cfg.data.val_fraction,
        cfg.data.test_fraction,
        cfg.data.split_seed,
    )
    if classify:
        check_classes_seen_in_training(splits, dataset.source)
    info: dict[str, Any] = {
        "source": dataset.source,
        "features": dataset.features or [f"x{i}" for i in range(dataset.x.shape[1])],
        "targets": dataset.targets or [f"y{i}" for i in range(1 if classify else dataset.y.shape[1])],
        "task": "classification" if classify else "regression",
        "n_outputs": int(dataset.y.max()) + 1 if classify else dataset.y.shape[1],
        "rows": {k: 0 if p is None else len(p[0]) for k, p in vars(splits).items()},
        "standardize": None,
    }
    if cfg.data.standardize:
        scaler = Standardizer.fit(splits.train[0])
        splits = scaler.apply(splits)
        info["standardize"] = {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}
    info["standardize_targets"] = None
    if cfg.data.standardize_targets and not classify:
        # raw targets such as prices (~1e5) make SGD diverge at any usual learning rate
        scaler = Standardizer.fit(splits.train[1])
        splits = scaler.apply(splits, targets=True)
        info["standardize_targets"] = {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}
    return dataset, splits, info
