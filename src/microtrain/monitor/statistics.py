"""What inspection computes, on the device where the tensors live, for many tensors at once,
with one copy to the host per inspection: norms (``torch._foreach_norm``: one kernel launch for
all parameters), 30-bin histograms, NaN and Inf counts, and what hidden units do.

Shared by a single run (``monitor.parameters``) and a stacked sweep (``stack.inspect``), whose
tensors carry a leading job dimension ``[K, ...]``.
"""

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor

HISTOGRAM_BINS = 30
SATURATED = 0.99  # |tanh| above this, or sigmoid within 0.01 of 0 or 1: the unit's gradient is < 2 % of its peak


def foreach_norms(tensors: Sequence[Tensor]) -> Tensor:
    """The L2 norm of each tensor, as one [len] tensor (float32 or wider)."""
    if not tensors:
        return torch.zeros(0)
    return torch.stack(torch._foreach_norm([t.detach() for t in tensors])).float()


def histograms(stacked: Tensor) -> Tensor:
    """Per row of ``stacked`` ([K, ...]): [min, max, count, sum, sum of squares, 30 bin counts]
    of its finite values, the bins as ``torch.histc`` counts them: [K, 35]. Non-finite values are
    left out (counted by ``nonfinite_counts``), so a diverging run never breaks the writer."""
    values = stacked.detach().flatten(1).float()
    finite = torch.isfinite(values)
    inf = torch.tensor(float("inf"), device=values.device, dtype=values.dtype)
    low = torch.where(finite, values, inf).amin(dim=1)
    high = torch.where(finite, values, -inf).amax(dim=1)
    # in float64: the span of finite float32 values near ±3e38 overflows float32 (a diverging
    # job's weights), which made bin positions NaN and the index op fail
    span = (high.double() - low.double()).clamp_min(1e-30)
    position = ((values.double() - low.double()[:, None]) / span[:, None] * HISTOGRAM_BINS).floor().clamp(0, HISTOGRAM_BINS - 1)
    position = torch.where(finite, position, torch.zeros_like(position)).nan_to_num(0.0).long()
    counts = torch.zeros(len(values), HISTOGRAM_BINS, device=values.device, dtype=values.dtype).scatter_add_(1, position, finite.to(values.dtype))
    clean = torch.where(finite, values, torch.zeros_like(values))
    summary = torch.stack([low, high, finite.sum(1).float(), clean.sum(1), (clean * clean).sum(1)], dim=1)
    return torch.cat([summary, counts], dim=1)


def histograms_of(tensors: list[Tensor]) -> Tensor:
    """``histograms`` of tensors of different sizes: [len(tensors), 35]. Padded with NaN (which
    ``histograms`` leaves out) into one batch when that costs little (at most 4x the elements, or
    64k in all): one set of kernels for all parameters instead of one per parameter."""
    flat = [t.detach().reshape(-1).float() for t in tensors]
    longest = max(len(t) for t in flat)
    if longest * len(flat) <= max(4 * sum(len(t) for t in flat), 65536):
        return histograms(torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=float("nan")))
    return torch.cat([histograms(t[None]) for t in flat])


def add_histogram_row(buffer: Any, name: str, row: list[float], step: int) -> None:
    """One row of ``histograms`` into a ``ScalarBuffer``, as TensorBoard's histogram proto."""
    low, high, count, total, squares = row[:5]
    if count == 0:
        return  # nothing finite to draw
    counts = row[5:] if high > low else [count]
    width = (high - low) / len(counts) if high > low else max(abs(low) * 0.01, 1e-6)
    limits = [low + width * (i + 1) for i in range(len(counts))]
    buffer.add_histogram(name, low, high, int(count), total, squares, limits, counts, step)


def nonfinite_counts(tensor: Tensor) -> tuple[int, int]:
    """(NaN count, Inf count) of a tensor."""
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def record_nonfinite(
    buffer: Any, names: Sequence[str], weights: Sequence[Tensor], grads: Sequence[Tensor], step: int, first: Optional[str]
) -> Optional[str]:
    """The NaN and Inf counts of every weight and gradient that has any, into a ``ScalarBuffer``;
    returns ``first``, or if None the first one found (weights first: a non-finite weight is
    what makes its gradients so), as a divergence names it."""
    for kind, tensors in (("weights", weights), ("grads", grads)):
        for name, tensor in zip(names, tensors):
            nan, inf = nonfinite_counts(tensor)
            if nan or inf:
                buffer.add(f"nonfinite/{kind}/{name}/nan", nan, step)
                buffer.add(f"nonfinite/{kind}/{name}/inf", inf, step)
                if first is None:
                    first = f"first non-finite {'gradient' if kind == 'grads' else 'weight'}: {name} at step {step} ({nan} NaN, {inf} Inf)"
    return first


def unit_fractions(kind: str, output: Tensor, stacked: bool = False) -> dict[str, Tensor]:
    """What a hidden layer's units do on one batch (``output``: [rows, units] after the activation;
    ``stacked``: [K, rows, units] of K jobs, a fraction per job).

    ``dead``: ReLU units never positive on the batch (their gradient is zero for every row, so
    SGD cannot revive them). ``saturated``: tanh or sigmoid units whose output lies in the flat
    tails (see SATURATED) for more than half of the batch."""
    if not stacked:
        output = output.detach().flatten(1) if output.dim() > 1 else output.detach()[:, None]
    rows = 1 if stacked else 0
    if kind == "ReLU":
        return {"dead": 1.0 - (output > 0).any(dim=rows).float().mean(dim=-1)}
    if kind == "Tanh":
        flat = output.abs() > SATURATED
    elif kind == "Sigmoid":
        flat = (output < 1 - SATURATED) | (output > SATURATED)
    else:
        return {}
    return {"saturated": (flat.float().mean(dim=rows) > 0.5).float().mean(dim=-1)}
