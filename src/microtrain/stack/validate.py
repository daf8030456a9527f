"""Losses and metrics of K stacked jobs on a whole split at once: the numbers a solo run gets
from Lightning's validation loop and torchmetrics (``monitor.metrics``), one forward for all."""

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from microtrain.data.batches import on_device
from microtrain.stack.jobs import StackedJob

EVAL_ROWS = 4096  # Lightning's validation batches in a solo run (data.batches: at least 4096 rows)


def predictions(step: Any, weights: list[Tensor], x: Tensor) -> Tensor:
    """Every job's model on the same rows: [K, rows, outputs]."""
    with torch.no_grad():
        return step.forward(weights, x.expand(len(weights[0]), *x.shape))


def losses(step: Any, out: Tensor, y: Tensor) -> Tensor:
    """Each job's loss, [K], of its predictions ``out`` [K, rows, ...] on the same targets."""
    return step.losses(out, y.expand(len(out), *y.shape))


def evaluate(step: Any, weights: list[Tensor], pair: tuple[Tensor, Tensor]) -> list[float]:
    """Each job's loss on all rows of the split at once, as ``fit`` reports it."""
    with torch.no_grad():
        return losses(step, predictions(step, weights, pair[0]), pair[1]).double().tolist()


def split_metrics(
    step: Any, pair: tuple[Tensor, Tensor], job: StackedJob, prefix: str, only_loss: bool = False, final: bool = False
) -> dict[str, list[float]]:
    """{f"{prefix}loss": [K values], and the split's metrics as torchmetrics computes them},
    from one pass over the split in chunks of at least EVAL_ROWS rows and one copy to the host."""
    if step.solo:  # ``final``: the run's final metrics, one pass over the whole split as Lightning's path takes them
        return _solo_metrics(step, pair, job, prefix, only_loss, final)
    weights = step.params
    if only_loss:
        return {f"{prefix}loss": evaluate(step, weights, pair)}
    x, y = pair
    rows = max(job.cfg.data.batch_size or len(x), EVAL_ROWS)
    names = list(job.prepared.module.val_metrics.keys()) if job.prepared.module.val_metrics is not None else []
    classify = f"{prefix}acc" in names
    sums: dict[str, Tensor] = {}

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums[name] + value if name in sums else value

    with torch.no_grad():
        for start in range(0, len(x), rows):
            xs, ys = x[start : start + rows], y[start : start + rows]
            out = predictions(step, weights, xs)
            add("loss", losses(step, out, ys).double() * len(xs))  # Lightning's weighted epoch mean
            if classify:
                add("acc", (out.argmax(dim=2) == ys).double().sum(dim=1))
            elif names:
                error = out.double() - ys.double().reshape(len(ys), -1)
                add("se", error.pow(2).sum(dim=1))  # [K, outputs]
                add("ae", error.abs().flatten(1).sum(dim=1))
    n = len(x)
    columns = {f"{prefix}loss": sums["loss"] / n}
    if classify:
        columns[f"{prefix}acc"] = sums["acc"] / n
    elif names:
        outputs = sums["se"].shape[1]
        mse = sums["se"].sum(dim=1) / (n * outputs)
        columns |= {f"{prefix}mse": mse, f"{prefix}mae": sums["ae"] / (n * outputs), f"{prefix}rmse": mse.sqrt()}
        if f"{prefix}r2" in names:
            target = y.double().reshape(n, -1)
            spread = (target - target.mean(dim=0)).pow(2).sum(dim=0)  # [outputs]
            columns[f"{prefix}r2"] = (1 - sums["se"] / spread).mean(dim=1)
    keys = list(columns)
    table = torch.stack([columns[k] for k in keys]).tolist()
    return dict(zip(keys, table))


def _solo_metrics(step: Any, pair: tuple[Tensor, Tensor], job: StackedJob, prefix: str, only_loss: bool, final: bool) -> dict[str, list[float]]:
    """``split_metrics`` of a solo run (a stack of one), as Lightning's path computes them, to the
    bit: the loss module's own reduction (all rows at once for the final losses), the validation
    loss as Lightning's epoch mean of its batches, the metrics as torchmetrics' own state."""
    module, (x, y) = job.prepared.module, pair
    weights = [w[0] for w in step.params]  # the job's own, without the job dimension
    with torch.no_grad():
        if only_loss:
            return {f"{prefix}loss": [float(module.loss_fn(step.forward(weights, x), y))]}
        rows = len(x) if final else max(job.cfg.data.batch_size or len(x), EVAL_ROWS)
        collection = module.val_metrics.to(x.device) if module.val_metrics is not None else None
        if collection is not None:
            collection.reset()
        total: Any = 0.0
        for start in range(0, len(x), rows):
            xs, ys = x[start : start + rows], y[start : start + rows]
            out = step.forward(weights, xs)
            total = _summed(total, module.loss_fn(out, ys), len(xs))
            if collection is not None:
                collection.update(module.predict_targets(out), ys)
        columns = {f"{prefix}loss": [float(total / torch.tensor(len(x)))]}
        if collection is not None:
            columns |= {name: [float(value)] for name, value in sorted(collection.compute().items())}
            collection.reset()
    return columns


def _summed(total: Any, loss: Tensor, rows: int) -> Any:
    """Lightning's weighted epoch mean, as its ResultMetric sums it (float32 at least), to the bit;
    the mean is ``total / torch.tensor(all rows)``."""
    return total + (loss if loss.dtype in (torch.float32, torch.float64) else loss.float()) * rows


def test_metrics(job: StackedJob, device: torch.device, dtype: torch.dtype, context: Any = None) -> dict[str, Any]:
    """The test split on the job's best checkpoint (the last without validation), as ``fit``
    reports it: in Lightning's test batches, torchmetrics on the job's own model, in the targets'
    units; ``context``: the precision's test context (bf16-mixed: autocast)."""
    module = job.prepared.module
    path: Optional[Path] = job.best_path if job.has_val else job.last_path
    model = copy.deepcopy(module.model).to(device, dtype)  # the job's own model keeps its final weights
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()})
    else:  # no validation ran before the run ended: the final weights, as Lightning's trainer.test without a checkpoint
        path = None
    assert job.prepared.splits.test is not None and module.test_metrics is not None  # a job with a test split; prepare built its metrics
    x, y = on_device(job.prepared.splits.test, device, dtype)
    metrics = module.test_metrics.to(device)
    metrics.reset()  # shared by the group's jobs (engine.build.prepare)
    rows, total = max(job.cfg.data.batch_size or len(x), EVAL_ROWS), 0.0  # Lightning's test batches
    with torch.no_grad(), context or nullcontext():  # bf16-mixed: autocast, as Lightning's trainer.test
        for start in range(0, len(x), rows):
            xs, ys = x[start : start + rows], y[start : start + rows]
            out = model(xs)
            total = _summed(total, module.loss_fn(out, ys), len(xs))
            prediction = module.predict_targets(out)
            if module.target_scale is not None:
                mean, std = (t.to(ys) for t in module.target_scale)
                prediction, ys = prediction * std + mean, ys * std + mean
            metrics.update(prediction, ys)
        values = {key: float(value) for key, value in metrics.compute().items()}
    loss = float(total / torch.tensor(len(x)))
    return dict(sorted((values | {"test_loss": loss}).items())) | {"test_checkpoint": str(path) if path else None}
