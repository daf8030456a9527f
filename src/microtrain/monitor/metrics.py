"""Evaluation metrics from torchmetrics: MSE, MAE, RMSE and R² for regression, accuracy for
classification. The test split's regression metrics are in the targets' own units (the module
undoes ``data.standardize_targets`` first); validation's stay in the loss's units."""

from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score


def build_metrics(task: str, n_classes: int, rows: int, prefix: str) -> MetricCollection:
    """Metrics for one split; R² needs at least two rows, so smaller splits go without it."""
    if task == "classification":
        return MetricCollection({"acc": MulticlassAccuracy(num_classes=n_classes, average="micro")}, prefix=prefix)
    metrics: dict[str, Metric | MetricCollection] = {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)}
    if rows >= 2:
        metrics["r2"] = R2Score(multioutput="uniform_average")
    return MetricCollection(metrics, prefix=prefix)
