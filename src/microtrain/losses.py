"""Loss functions by name. All but ``residual_sum`` are torch.nn's own."""

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


LOSSES = ("mse", "sse", "l1", "huber", "cross_entropy", "residual_sum")
CLASSIFICATION_LOSSES = ("cross_entropy",)


class ResidualSum(nn.Module):
    """Sum of (prediction - target): its gradient w.r.t. every prediction is 1.

    This is the notebooks' ``predictions.backward(torch.ones_like(predictions))`` probe and
    their ``loss = output - 1`` example, written as a loss so it can be trained and explained.
    """

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (prediction - target).sum()


def build_loss(cfg: Mapping[str, Any]) -> nn.Module:
    name = cfg["name"]
    if name == "mse":
        return nn.MSELoss()
    if name == "sse":
        return nn.MSELoss(reduction="sum")
    if name == "l1":
        return nn.L1Loss()
    if name == "huber":
        return nn.HuberLoss(delta=cfg["delta"])
    if name == "cross_entropy":
        return nn.CrossEntropyLoss()
    return ResidualSum()


def is_classification(cfg: Mapping[str, Any]) -> bool:
    return cfg["name"] in CLASSIFICATION_LOSSES


def per_job(loss_fn: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of each of K stacked jobs: predictions ``[K, B, ...]`` and targets ``[K, B, ...]``
    -> ``[K]``, each the job's loss on its own rows as ``loss_fn`` reduces it (mean or sum), by
    one elementwise kernel for all K (the loss module with ``reduction="none"``)."""
    if isinstance(loss_fn, ResidualSum):
        return lambda prediction, target: (prediction - target).flatten(1).sum(1)
    reduction = loss_fn.reduction
    elementwise = copy.copy(loss_fn)
    elementwise.reduction = "none"  # type: ignore[assignment]  # torch's losses keep it as a str
    classes = isinstance(loss_fn, nn.CrossEntropyLoss)  # its classes on dimension 1: [K, classes, B]

    def losses(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        each = elementwise(prediction.transpose(1, 2), target) if classes else elementwise(prediction, target)
        return each.flatten(1).mean(1) if reduction == "mean" else each.flatten(1).sum(1)

    return losses
