"""Independent truths for the linear model: the least-squares optimum and the analytic gradient.

Used to check autograd (explain_step) and to show how far SGD still is from the best linear fit
(the optimality gap logged while training).
"""

from typing import Optional

import torch

SQUARED_LOSSES = ("mse", "sse")


def applies(model_name: str, loss_name: str) -> bool:
    return model_name == "linear" and loss_name in SQUARED_LOSSES


def _design(x: torch.Tensor, bias: bool) -> torch.Tensor:
    x = x.double()
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) if bias else x


NORMAL_EQUATIONS_FROM = 5_000_000  # design matrix cells: above this, solve the small (features+1)² system instead


def least_squares_loss(x: torch.Tensor, y: torch.Tensor, bias: bool, loss_name: str) -> float:
    """The smallest training loss any linear map can reach on (x, y), solved in float64.

    A tall table is solved through the normal equations XᵀX w = Xᵀy (a (features+1)² system, in
    float64): LAPACK's gelsd on the whole 200 000 x 51 design failed here with "Argument 4 has
    illegal value", and it would need the design's SVD workspace besides."""
    design, y = _design(x.cpu(), bias), y.cpu().double()
    if design.numel() > NORMAL_EQUATIONS_FROM:
        solution = torch.linalg.lstsq(design.T @ design, design.T @ y, driver="gelsd").solution
    else:
        solution = torch.linalg.lstsq(design, y, driver="gelsd").solution
    squared = ((design @ solution - y) ** 2).sum()
    return float(squared / y.numel() if loss_name == "mse" else squared)


def linear_gradient(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], loss_name: str) -> dict[str, torch.Tensor]:
    """dL/dW = c·(ŷ − y)ᵀx and dL/db = c·Σ_rows(ŷ − y), with c = 2/(N·k) for mse and 2 for sse."""
    prediction = x @ weight.T + (bias if bias is not None else 0)
    residual = prediction - y
    scale = 2.0 / y.numel() if loss_name == "mse" else 2.0
    grads = {"weight": scale * residual.T @ x}
    if bias is not None:
        grads["bias"] = scale * residual.sum(dim=0)
    return grads
