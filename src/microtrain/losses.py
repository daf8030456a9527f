"""Loss functions by name. All but ``residual_sum`` are torch.nn's own."""

from collections.abc import Mapping
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
