"""What ``monitor.parameters`` records for one run, computed for K stacked jobs at once: norms,
update ratios and 30-bin histograms of every parameter and gradient, on the device, with one
copy to the host per inspection. Each job's values then go to its own TensorBoard run."""

from typing import Any

import torch
from torch import Tensor

from microtrain.monitor.parameters import HISTOGRAM_BINS


def norms(stacked: Tensor) -> Tensor:
    """The L2 norm of each job's slice: [K]."""
    return torch.linalg.vector_norm(stacked.detach().flatten(1).float(), dim=1)


def update_ratios(before: Tensor, after: Tensor) -> Tensor:
    """‖Δw‖/‖w‖ per job, as ``ParameterInspector`` writes it."""
    return norms(after - before) / norms(before).clamp_min(1e-12)


def histograms(stacked: Tensor) -> Tensor:
    """Per job: [min, max, count, sum, sum of squares, 30 bin counts] of its finite values, the
    bins as ``torch.histc`` counts them (``monitor.parameters.write_histogram``): [K, 35]."""
    values = stacked.detach().flatten(1).float()
    finite = torch.isfinite(values)
    inf = torch.tensor(float("inf"), device=values.device)
    low = torch.where(finite, values, inf).amin(dim=1)
    high = torch.where(finite, values, -inf).amax(dim=1)
    span = (high - low).clamp_min(1e-30)
    position = ((values - low[:, None]) / span[:, None] * HISTOGRAM_BINS).floor().clamp(0, HISTOGRAM_BINS - 1)
    position = torch.where(finite, position, torch.zeros_like(position)).long()
    counts = torch.zeros(len(values), HISTOGRAM_BINS, device=values.device).scatter_add_(1, position, finite.float())
    clean = torch.where(finite, values, torch.zeros_like(values))
    summary = torch.stack([low, high, finite.sum(1).float(), clean.sum(1), (clean * clean).sum(1)], dim=1)
    return torch.cat([summary, counts], dim=1)


def add_histogram_row(buffer: Any, tag: str, row: list[float], step: int) -> None:
    """One job's row of ``histograms``, as ``write_histogram`` would write it, into its ScalarBuffer."""
    low, high, count, total, squares = row[:5]
    if count == 0:
        return
    counts = row[5:] if high > low else [count]
    width = (high - low) / len(counts) if high > low else max(abs(low) * 0.01, 1e-6)
    limits = [low + width * (i + 1) for i in range(len(counts))]
    buffer.add_histogram(tag, low, high, int(count), total, squares, limits, counts, step)
