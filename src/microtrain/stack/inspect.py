"""What ``monitor.parameters`` records for one run, computed for K stacked jobs at once: norms,
update ratios and 30-bin histograms of every parameter and gradient, and the MLP's hidden-layer
histograms and dead or saturated units, on the device, with one copy to the host per
inspection (and one of the weights where ``trajectory.pt`` keeps them). Each job's values then
go to its own TensorBoard run; ``log.curvature`` per job, on the job's own model."""

import math
import time
from typing import Any, Optional

import torch
from torch import Tensor

from microtrain.monitor import curvature, trajectory
from microtrain.monitor.activations import hidden_layers
from microtrain.monitor.inspection_grid import Budget, grid
from microtrain.monitor.statistics import add_histogram_row, histograms, record_nonfinite, unit_fractions
from microtrain.stack.validate import evaluate

GROUP_BYTES = 256 * 2**20  # of trajectory.pt points a group holds on the host before it keeps fewer (_keep)


def norms(stacked: Tensor) -> Tensor:
    """The L2 norm of each job's slice: [K]."""
    flat = stacked.detach().flatten(1)  # in its own dtype (float64 too), as monitor.statistics.foreach_norms
    return torch.linalg.vector_norm(flat if flat.dtype in (torch.float32, torch.float64) else flat.float(), dim=1).float()


def update_ratios(before: Tensor, after: Tensor) -> Tensor:
    """‖Δw‖/‖w‖ per job, as ``ParameterInspector`` writes it."""
    return norms(after - before) / norms(before).clamp_min(1e-12)


class StackedInspector:
    """``ParameterInspector`` for K jobs: at inspected steps each job's TensorBoard run gets
    ``weights/`` and ``grads/`` histograms, ``weight_norm/``, ``grad_norm/``, ``update_ratio/``
    and ``lr`` (and ``train_loss_full``, ``optimality_gap`` for least squares), the same tags at
    the same steps; ``log.inspect_every_n_steps=auto`` spaces them by the same budget rule."""

    def __init__(self, jobs: list, step: Any, log: Any, first: int, train: tuple[Tensor, Tensor], planned: int):
        self.jobs, self.step, self.train = jobs, step, train
        self.enabled, self.histograms = log.inspect, log.histograms
        self.auto = log.inspect_every_n_steps == "auto"
        self.every, self.histogram_every = grid(planned) if self.auto else (int(log.inspect_every_n_steps),) * 2
        self.planned = (self.every, self.histogram_every)
        self.planned_points = [-(-max(planned - first, 0) // n) if math.isfinite(planned) else 0 for n in self.planned]
        self.was_widened = False
        self.budget = Budget(log.inspect_budget, first, planned)
        self.curvature = bool(log.curvature)
        self.last: Optional[int] = None
        # the MLP's hidden layer, fed by the model's first linear layer from the batch itself
        # trajectory.pt: the K jobs' flat weights at the inspections a solo run keeps, [K, parameters] on the host
        self.parameters = sum(p[0].numel() for p in step.params)
        self.trajectory: list[tuple[int, Tensor, set[int]]] = []  # (step, weights, the jobs it holds)
        self.kept_bytes = 0
        layers = hidden_layers(jobs[0].model) if log.activations else []
        first_linear = next((n for n, m in jobs[0].model.named_modules() if isinstance(m, torch.nn.Linear)), None)
        self.layers = [(name, module) for name, module in layers if name == first_linear]

    def widened(self) -> dict[str, Any]:
        """The points auto inspected and those it planned, if the budget widened the grid (K jobs'
        inspection against one clock: a large group's points lie wider apart than its solo runs')."""
        if not (self.enabled and self.was_widened):
            return {}
        return {"inspections": [*self.budget.inspections(), *self.planned_points, *self.planned]}

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def inspect(self, step: int, before: list[Tensor], grads: list[Tensor], x: Optional[Tensor] = None, y: Optional[Tensor] = None) -> None:
        """The weights before this step's update, its gradients and the update's ratio, for all jobs
        in one host copy (``x``, ``y``: the step's batches, [K, B, ...], for the hidden layer and
        the gradient noise scale)."""
        started = time.perf_counter()
        rows = [norms(w) for w in before] + [norms(g) for g in grads] + [update_ratios(w, a) for w, a in zip(before, self.step.params)]
        scheduled = step % self.histogram_every == 0  # histograms and curvature (log.histograms=false or not)
        drawing = self.histograms and scheduled
        units, unit_names = self._units(before, x, drawing)
        values = torch.stack(rows + [u for u in units if u.dim() == 1]).T.tolist()  # [K, 3 * parameters + fractions]
        hists = torch.stack([histograms(t) for t in (*before, *grads)], dim=1).tolist() if drawing else None
        layer_hists = torch.stack([u for u in units if u.dim() == 2], dim=1).tolist() if drawing and self.layers else None
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
            if not all(map(math.isfinite, values[k][: 2 * n])):  # as a solo run: where the NaN or Inf are
                mine = [t[k] for t in before], [t[k] for t in grads]
                job.first_nonfinite = record_nonfinite(out, self.step.names, *mine, step, job.first_nonfinite)
            for j, name in enumerate(unit_names):
                out.add(name, values[k][3 * n + j], step)
            if layer_hists is not None:
                for j, (layer, _) in enumerate(self.layers):
                    add_histogram_row(out, f"preactivations/{layer}", layer_hists[k][2 * j], step)
                    add_histogram_row(out, f"activations/{layer}", layer_hists[k][2 * j + 1], step)
            out.add("lr", job.lr(), step)
        self._full_loss(step, before)
        self._keep(step, before, drawing, [k for k, job in enumerate(self.jobs) if job.active])
        if self.curvature and scheduled:
            self._curvature(step, before, x, y)
        for job in self.jobs:
            job.scalars.flush(job.writer)
        self._schedule(step, time.perf_counter() - started, drawing or self.curvature and scheduled)

    def _curvature(self, step: int, weights: list[Tensor], x: Optional[Tensor], y: Optional[Tensor]) -> None:
        """``log.curvature`` as each job's solo run computes it (``monitor.curvature`` on the job's own
        model, with its weights of this step): one job after another, spaced by the budget as all inspection."""
        loss_fn = self.jobs[0].prepared.module.loss_fn
        for k, job in enumerate(self.jobs):
            if not job.active:
                continue
            model = job.model.to(self.train[0].device, weights[0].dtype)
            with torch.no_grad():
                params = dict(model.named_parameters())
                for name, stacked in zip(self.step.names, weights):
                    params[name].copy_(stacked[k])
            curvature.record(job.scalars, model, loss_fn, self.train, job.optimizer, (x[k], y[k]) if x is not None and y is not None else None, step)

    def _units(self, weights: list[Tensor], x: Optional[Tensor], drawing: bool) -> tuple[list[Tensor], list[str]]:
        """Per job: the hidden layer's dead or saturated fraction ([K] each) and, when drawing,
        histograms of its pre-activations and activations ([K, 35] each)."""
        if not self.layers or x is None:
            return [], []
        params = dict(zip(self.step.names, weights))
        out, names = [], []
        for layer, module in self.layers:
            weight, bias = params[f"{layer}.weight"], params.get(f"{layer}.bias")
            pre = torch.bmm(x.to(weight.dtype), weight.transpose(1, 2))
            if bias is not None:
                pre = pre + bias[:, None, :]
            post = module(pre)
            for what, values in unit_fractions(type(module).__name__, post.detach(), stacked=True).items():
                out.append(values)
                names.append(f"{what}_units/{layer}")
            if drawing:
                out += [histograms(pre), histograms(post)]
        return out, names

    def final(self, step: int, jobs: list[int]) -> None:
        """The final weights of these jobs, so every run ends with its final state (``on_train_end``)."""
        if not self.enabled or self.last == step:
            return
        values = torch.stack([norms(w) for w in self.step.params]).T.tolist()
        hists = torch.stack([histograms(w) for w in self.step.params], dim=1).tolist() if self.histograms else None
        for k, job in enumerate(self.jobs):
            if k not in jobs:
                continue
            for i, name in enumerate(self.step.names):
                job.scalars.add(f"weight_norm/{name}", values[k][i], step)
                if hists is not None:
                    add_histogram_row(job.scalars, f"weights/{name}", hists[k][i], step)
            job.scalars.add("lr", job.lr(), step)
        self._full_loss(step, self.step.params, jobs)
        self._keep(step, self.step.params, self.histograms, jobs)

    def _keep(self, step: int, weights: list[Tensor], drawing: bool, jobs: list[int]) -> None:
        """The solo rule (``monitor.trajectory.keeps``) within the group's share of host memory: K
        jobs' paths held until they end take K times a solo run's (a 1,024-job group of 10k
        parameters would hold ~10 GB), so past GROUP_BYTES only the histogram steps are kept, and
        past 4 × GROUP_BYTES none; the job's path then is sparser than its solo twin's."""
        size = len(self.jobs) * self.parameters * 4
        room = drawing and self.kept_bytes + size <= 4 * GROUP_BYTES or self.kept_bytes + size <= GROUP_BYTES
        if trajectory.keeps(self.parameters, drawing) and room:
            self.trajectory.append((step, torch.cat([w.detach().flatten(1) for w in weights], dim=1).float().cpu(), set(jobs)))
            self.kept_bytes += size

    def save_trajectory(self, k: int, job: Any) -> None:
        """Job k's ``trajectory.pt``, as its solo run's (a resumed job's path so far kept up to its resume step)."""
        points = [(step, weights[k]) for step, weights, jobs in self.trajectory if k in jobs]
        if points:
            trajectory.save(job.run_dir / trajectory.TRAJECTORY, self.step.names, points, job.start_step)

    def _full_loss(self, step: int, weights: list[Tensor], jobs: Optional[list[int]] = None) -> None:
        """train_loss_full and optimality_gap of linear least-squares jobs (of ``jobs``, or all active)."""
        if self.jobs[0].prepared.optimum is None:
            return
        full = evaluate(self.step, weights, self.train)
        for k, job in enumerate(self.jobs):
            if k in jobs if jobs is not None else job.active:
                job.scalars.add("train_loss_full", full[k], step)
                job.scalars.add("optimality_gap", full[k] - job.prepared.optimum, step)

    def _schedule(self, step: int, cost: float, drawn: bool) -> None:
        """auto: ``monitor.inspection_grid.Budget``'s rule, the same as a solo run's; the stacked step is
        compiled or not for the whole run, so timing cannot break bitwise resume."""
        self.last = step
        self.budget.add(cost, drawn)
        if self.auto:
            self.every, self.histogram_every = self.budget.widened(step, self.every, self.histogram_every, drawn, self.planned)
            self.was_widened |= (self.every, self.histogram_every) != self.planned
