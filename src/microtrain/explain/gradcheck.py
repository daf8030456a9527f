"""Autograd against central finite differences, in float64, on a copy of the model."""

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

STEP = 1e-6  # central differences: truncation error ~STEP², rounding error ~1e-16/STEP


@dataclass
class ParameterCheck:
    name: str
    max_abs_error: float  # worst |autograd − numeric| over the parameter's elements
    rel_error: float  # ‖autograd − numeric‖ / max(‖autograd‖, ‖numeric‖)
    passed: bool


def check_gradients(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, tolerance: float = 1e-6) -> list[ParameterCheck]:
    """Compare every parameter's autograd gradient with (L(p+h) − L(p−h)) / 2h, element by element."""
    model = copy.deepcopy(model).double().cpu()
    x = x.detach().double().cpu()
    y = y.detach().cpu()
    y = y.double() if y.is_floating_point() else y

    def loss() -> torch.Tensor:
        return loss_fn(model(x), y)

    model.zero_grad()
    loss().backward()
    results = []
    for name, param in model.named_parameters():
        analytic = cast(torch.Tensor, param.grad).detach().clone()  # every parameter of the loss has one after backward
        numeric = torch.zeros_like(analytic)
        flat, out = param.data.view(-1), numeric.view(-1)
        with torch.no_grad():
            for i in range(flat.numel()):
                original = flat[i].item()
                flat[i] = original + STEP
                plus = loss().item()
                flat[i] = original - STEP
                minus = loss().item()
                flat[i] = original
                out[i] = (plus - minus) / (2 * STEP)
        results.append(_compare(name, analytic, numeric, tolerance))
    return results


def _compare(name: str, analytic: torch.Tensor, numeric: torch.Tensor, tolerance: float) -> ParameterCheck:
    diff = analytic - numeric
    scale = max(analytic.norm().item(), numeric.norm().item())
    rel = diff.norm().item() / scale if scale > 1e-12 else diff.norm().item()
    return ParameterCheck(name, diff.abs().max().item(), rel, rel < tolerance)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
