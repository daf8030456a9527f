"""What ``monitor.parameters`` records for one run, computed for K stacked jobs at once: norms,
update ratios and 30-bin histograms of every parameter and gradient, on the device, with one
copy to the host per inspection. Each job's values then go to its own TensorBoard run."""

import time
from typing import Any, Optional

import torch
from torch import Tensor

from microtrain.monitor.parameters import HISTOGRAM_BINS, auto_interval
from microtrain.stack.validate import evaluate


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


class StackedInspector:
    """``ParameterInspector`` for K jobs: at inspected steps each job's TensorBoard run gets
    ``weights/`` and ``grads/`` histograms, ``weight_norm/``, ``grad_norm/``, ``update_ratio/``
    and ``lr`` (and ``train_loss_full``, ``optimality_gap`` for least squares), the same tags at
    the same steps; ``log.inspect_every_n_steps=auto`` spaces them by the same budget rule."""

    def __init__(self, jobs: list, step: Any, log: Any, first: int, train: tuple[Tensor, Tensor]):
        self.jobs, self.step, self.train = jobs, step, train
        self.histograms = log.histograms
        self.auto = log.inspect_every_n_steps == "auto"
        self.every = 1 if self.auto else int(log.inspect_every_n_steps)
        self.budget, self.next = log.inspect_budget, first
        self.last: Optional[int] = None
        self._clock: Optional[tuple[float, int]] = None

    def due(self, step: int) -> bool:
        return step >= self.next if self.auto else step % self.every == 0

    def inspect(self, step: int, before: list[Tensor], grads: list[Tensor]) -> None:
        """The weights before this step's update, its gradients and the update's ratio, for all jobs
        in one host copy."""
        started = time.perf_counter()
        rows = [norms(w) for w in before] + [norms(g) for g in grads] + [update_ratios(w, a) for w, a in zip(before, self.step.params)]
        values = torch.stack(rows).T.tolist()  # [K, 3 * parameters]
        hists = torch.stack([histograms(t) for t in (*before, *grads)], dim=1).tolist() if self.histograms else None
        n = len(self.step.names)
        for k, job in enumerate(self.jobs):
            if not job.active:
                continue
            out = job.scalars
            for i, name in enumerate(self.step.names):
                out.add(f"weight_norm/{name}", values[k][i], step)
                out.add(f"grad_norm/{name}", values[k][n + i], step)
                out.add(f"update_ratio/{name}", values[k][2 * n + i], step)
                if hists is not None:
                    add_histogram_row(out, f"weights/{name}", hists[k][i], step)
                    add_histogram_row(out, f"grads/{name}", hists[k][n + i], step)
            out.add("lr", job.lr(), step)
        self._full_loss(step, before)
        for job in self.jobs:
            job.scalars.flush(job.writer, force=True)
        self._schedule(step, time.perf_counter() - started)

    def final(self, step: int) -> None:
        """The final weights, so every run ends with its final state (``on_train_end``)."""
        if self.last == step:
            return
        values = torch.stack([norms(w) for w in self.step.params]).T.tolist()
        hists = torch.stack([histograms(w) for w in self.step.params], dim=1).tolist() if self.histograms else None
        for k, job in enumerate(self.jobs):
            if not job.active:
                continue
            for i, name in enumerate(self.step.names):
                job.scalars.add(f"weight_norm/{name}", values[k][i], step)
                if hists is not None:
                    add_histogram_row(job.scalars, f"weights/{name}", hists[k][i], step)
            job.scalars.add("lr", job.lr(), step)
        self._full_loss(step, self.step.params)

    def _full_loss(self, step: int, weights: list[Tensor]) -> None:
        """train_loss_full and optimality_gap of linear least-squares jobs."""
        if self.jobs[0].prepared.optimum is None:
            return
        full = evaluate(self.step, weights, self.train, self.jobs[0].prepared.module.loss_fn)
        for k, job in enumerate(self.jobs):
            if job.active:
                job.scalars.add("train_loss_full", full[k], step)
                job.scalars.add("optimality_gap", full[k] - job.prepared.optimum, step)

    def _schedule(self, step: int, cost: float) -> None:
        now = time.perf_counter()
        self.last = step
        if self.auto and self._clock is not None and step > self._clock[1]:
            per_step = max((now - cost - self._clock[0]) / (step - self._clock[1]), 1e-9)
            self.every = auto_interval(cost, self.budget, per_step)
        self.next = step + self.every
        self._clock = (now, step)
