"""``log.curvature=true``: how sharp the loss is where training is, and how noisy its gradient.

* ``hessian_top_eigenvalue``: the largest eigenvalue of the Hessian of the training loss (the
  whole training split, at most CURVATURE_ROWS rows) at the current weights. Gradient descent
  with step size lr is stable along a direction only while its curvature stays below 2/lr
  (with heavy-ball momentum m: (2 + 2m)/lr), logged beside it as ``edge_of_stability``
  (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of
  Stability"). Up to EXACT_LIMIT parameters the Hessian is built exactly (``torch.func.hessian``,
  23.5 ms for the 321-parameter MLP here) and ``torch.linalg.eigvalsh`` gives its spectrum;
  above that, POWER_ITERATIONS Hessian-vector products (``torch.func.vjp`` of ``grad``) find
  the eigenvalue of largest magnitude.
* ``gradient_noise_scale``: B = tr(Σ)/‖G‖², the simple noise scale of McCandlish et al. 2018
  ("An Empirical Model of Large-Batch Training"), from the per-sample gradients of one batch
  (``torch.func.vmap`` of ``grad``: 1.3 ms for 32 samples here). Batches much smaller than B
  waste steps on noise; much larger ones waste samples.
"""

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, vjp, vmap

EXACT_LIMIT = 1000  # parameters
POWER_ITERATIONS = 20
CURVATURE_ROWS = 4096


def flat_loss(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """(the loss on (x, y) as a function of all weights in one flat vector, the model's weights so)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def loss(flat: Tensor) -> Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return loss, flat


def top_hessian_eigenvalue(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> float:
    """The largest Hessian eigenvalue of ``loss_fn(model(x), y)`` at the model's weights."""
    x, y = x[:CURVATURE_ROWS], y[:CURVATURE_ROWS]
    loss, flat = flat_loss(model, loss_fn, x, y)
    if flat.numel() <= EXACT_LIMIT:
        return float(torch.linalg.eigvalsh(hessian(loss)(flat).double())[-1])
    hvp = vjp(grad(loss), flat)[1]  # reverse over reverse: jvp of grad (forward over reverse)
    # fails on a linear model here ("ZeroTensors are immutable", torch 2.13)
    generator = torch.Generator(device="cpu").manual_seed(seed)  # the run's own random state stays untouched
    v = torch.randn(flat.shape, generator=generator).to(flat)
    v = v / v.norm()
    value = 0.0
    for _ in range(POWER_ITERATIONS):
        (hv,) = hvp(v)
        value = float(torch.dot(hv, v))
        v = hv / hv.norm().clamp_min(1e-30)
    return value


def edge_of_stability(optimizer: torch.optim.Optimizer) -> Optional[float]:
    """(2 + 2·momentum)/lr for SGD; None for optimizers whose step is preconditioned (Adam)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return None
    group = optimizer.param_groups[0]
    return (2 + 2 * float(group.get("momentum", 0) or 0)) / float(group["lr"])


def gradient_noise_scale(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> float:
    """tr(Σ)/‖G‖² from the per-sample gradients of one batch (nan for a batch of one row)."""
    if len(x) < 2:
        return float("nan")
    params = {n: p.detach() for n, p in model.named_parameters()}

    def sample_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    g = torch.cat([t.flatten(1) for t in per_sample.values()], dim=1).double()  # [rows, parameters]
    mean = g.mean(0)
    trace = g.var(0, unbiased=True).sum()
    return float(trace / (mean @ mean).clamp_min(1e-300))


def record(
    buffer: Any, model: nn.Module, loss_fn: nn.Module, train: tuple[Tensor, Tensor], optimizer: torch.optim.Optimizer, batch: Any, step: int
) -> None:
    """``log.curvature``'s scalars at ``step`` into a ``ScalarBuffer``: the Hessian's top eigenvalue on
    the training split, the edge of stability (when the optimizer has one) and the gradient noise
    scale on the step's batch (when there is one)."""
    buffer.add("hessian_top_eigenvalue", top_hessian_eigenvalue(model, loss_fn, *train, seed=step), step)
    edge = edge_of_stability(optimizer)
    if edge is not None:
        buffer.add("edge_of_stability", edge, step)
    if batch is not None:
        buffer.add("gradient_noise_scale", gradient_noise_scale(model, loss_fn, *batch), step)
