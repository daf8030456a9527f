"""What each parameter is doing, densely and nearly for free, written to TensorBoard.

At inspected steps, per parameter ``name`` (``weight``, ``fc1.bias``, ...): ``weight_norm/``,
``grad_norm/`` (L2) and ``update_ratio/`` (‖Δw‖/‖w‖ of that step); every few inspections
``weights/`` and ``grads/`` histograms; plus ``lr``. For an MLP also, from a second forward
pass of the inspected batch under forward hooks (hooks only then): ``preactivations/`` and
``activations/`` histograms of the hidden layer and its ``dead_units/`` (ReLU) or
``saturated_units/`` (tanh, sigmoid) fraction. For a linear model with a squared loss
``train_loss_full`` (the current weights on the whole training split) and ``optimality_gap``
= that minus ``train_loss_optimum``, the least-squares optimum. With ``log.curvature=true``
the top Hessian eigenvalue, 2/lr and the gradient noise scale (``monitor.curvature``). A
non-finite weight or gradient is counted (``nonfinite/<weights|grads>/<name>/<nan|inf>``)
instead of drawn. ``monitor.tags`` says what each is called in TensorBoard.

Weights and gradients are read in ``on_before_optimizer_step`` (after backward, before the
update) and the update in ``stepped``, right after it, which ``engine.bypass.StepLoop`` calls,
so only inspected steps go through Lightning's hooks. All statistics are computed on the
device for all parameters at once (``monitor.statistics``), copied to the host once per
inspection, and written in bursts (``monitor.scalars.ScalarBuffer``).

With ``log.inspect_every_n_steps=auto`` the run is inspected on a grid of about
INSPECT_POINTS points over its planned steps, with HISTOGRAM_SLICES of them also drawing
histograms; the grid is widened (doubled) while inspection, at its cost so far, would take more
than ``log.inspect_budget`` of the run's projected wall clock and start-up (``Budget``). Measured here on the default
``model=mlp`` run (500 steps): 250 points, 26 histogram slices, ~3 % of its wall clock.
"""

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

import lightning as L
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from microtrain.monitor import curvature, trajectory
from microtrain.monitor.activations import capture, hidden_layers
from microtrain.monitor.progress import planned_steps
from microtrain.monitor.scalars import ScalarBuffer
from microtrain.monitor.inspection_grid import Budget, grid
from microtrain.monitor.statistics import add_histogram_row, foreach_norms, histograms, histograms_of, record_nonfinite, unit_fractions

if TYPE_CHECKING:  # the callbacks read the module's model, loss and loss window
    from microtrain.engine.module import Trainee

COMPILED_INTERVAL = 50  # auto under loop.compile: inspected steps run eager, so at most one in 50 is


def tensorboard_writer(trainer: "L.Trainer") -> Optional[SummaryWriter]:
    """The run's SummaryWriter on rank 0; None on other ranks or with no logger."""
    if not trainer.is_global_zero or trainer.logger is None:
        return None
    writer = trainer.logger.experiment  # type: ignore[attr-defined]  # every Lightning logger has one; their base class does not declare it
    return writer if isinstance(writer, SummaryWriter) else None


class ParameterInspector(L.Callback):
    def __init__(
        self,
        every_n_steps: Any = "auto",
        histograms: bool = True,
        budget: float = 0.05,
        optimum: Optional[float] = None,
        train: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        activations: bool = True,
        curvature: bool = False,
        enabled: bool = True,
    ):
        self.optimum, self.train = optimum, train
        self.auto = every_n_steps == "auto"
        self.every_n_steps = 1 if self.auto else int(every_n_steps)
        self.histogram_every = self.every_n_steps
        self.histograms, self.activations, self.curvature = histograms, activations, curvature
        self.budget = budget
        self.widen = self.auto  # fixed_grid() stops widening under loop.compile
        self._planned = (self.every_n_steps, self.histogram_every)  # auto's grid for the run: set at its start
        self.enabled = enabled
        self.scalars = ScalarBuffer(max_items=1024, max_seconds=2.0)
        self._before: list[torch.Tensor] = []
        self._pending: Optional[tuple[int, list, list]] = None  # (step, scalars, histograms) on the device, not yet copied
        self._step: Optional[int] = None  # the last step inspected
        self._budget = Budget(budget, 0, None)  # the run's first step and plan: at the train start
        self._names: list[str] = []
        self._inspected: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._layers: list[tuple[str, nn.Module]] = []
        self.first_nonfinite: Optional[str] = None  # for the divergence message
        self.trajectory: list[tuple[int, torch.Tensor]] = []  # (step, all weights flat, on the host)
        self._trajectory_file: Optional[Path] = None
        self._resumed_at = 0

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        module = cast("Trainee", pl_module)  # microtrain's callbacks serve its Trainee
        self.enabled = self.enabled and trainer.is_global_zero  # only rank 0 writes, so only rank 0 needs the hooks
        planned = planned_steps(trainer)
        if self.auto:
            self.every_n_steps, self.histogram_every = self._planned = grid(planned)
        self._budget.first_step, self._budget.planned = trainer.global_step, planned
        self._names = [name for name, _ in module.model.named_parameters()]
        self._layers = hidden_layers(module.model) if self.activations else []
        writer = tensorboard_writer(trainer)
        if writer is None:
            self.enabled = False
            return
        if self.train is not None:
            self.train = module.to_model(*self.train)
        assert trainer.logger is not None  # tensorboard_writer found its writer
        self._trajectory_file = Path(cast(str, trainer.logger.save_dir)) / trajectory.TRAJECTORY
        self._resumed_at = trainer.global_step  # a resumed run's path so far is kept up to this step
        if self.optimum is not None:
            self.scalars.add("train_loss_optimum", self.optimum, trainer.global_step)

    def fixed_grid(self) -> None:
        """Under ``loop.compile`` inspected steps run eager, which rounds differently from the
        compiled graph: which steps are eager must not depend on timing, or two runs, or a run
        and its resume, would not be bitwise equal. So the grid is not widened by the clock;
        and under auto it is at least COMPILED_INTERVAL steps, so nearly every step is compiled."""
        self.widen = False
        if self.auto and self.every_n_steps < COMPILED_INTERVAL:
            self.every_n_steps = COMPILED_INTERVAL
            self.histogram_every = COMPILED_INTERVAL * max(1, math.ceil(self.histogram_every / COMPILED_INTERVAL))

    def due(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def needs_hooks(self, step: int) -> bool:
        """Steps Lightning's hooks must reach: the inspected ones."""
        return self.enabled and self.due(step)

    def on_before_optimizer_step(self, trainer: "L.Trainer", pl_module: "L.LightningModule", optimizer: Any) -> None:
        step = trainer.global_step  # steps completed before this one
        if not self.enabled or not self.due(step):
            return
        started = time.perf_counter()
        self._inspect(cast("Trainee", pl_module), optimizer, step, with_grads=True)
        self._budget.add(time.perf_counter() - started, self._drawn(step))

    def stepped(self, pl_module: "Trainee") -> None:
        """Right after an inspected step's update (``StepLoop`` calls it): its update ratios."""
        if not self._before:
            return
        started = time.perf_counter()
        after = [p.detach() for p in pl_module.model.parameters()]
        change = foreach_norms(torch._foreach_sub(after, self._before))
        ratios = change / foreach_norms(self._before).clamp_min(1e-12)
        self._copy_to_host(extra=[([f"update_ratio/{n}" for n in self._names], ratios)])
        self._before = []
        self._budget.add(time.perf_counter() - started, self._drawn(self._step))
        if self.widen and self._step is not None:
            grid = self._budget.widened(self._step, self.every_n_steps, self.histogram_every, self._drawn(self._step), self._planned)
            self.every_n_steps, self.histogram_every = grid

    def _drawn(self, step: Optional[int]) -> bool:
        """Whether the inspection of ``step`` drew histograms (or the curvature): the costly ones."""
        return step is not None and step % self.histogram_every == 0 and (self.histograms or self.curvature)

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """The final weights, so every run ends with its final state; then everything held."""
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        if self.enabled and trainer.global_step != self._step:
            self._inspect(cast("Trainee", pl_module), pl_module.optimizers(), trainer.global_step, with_grads=False, final=True)
            self._copy_to_host()
        self.scalars.flush(writer, force=True)
        if self.trajectory and self._trajectory_file is not None:
            trajectory.save(self._trajectory_file, self._names, self.trajectory, self._resumed_at)

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._before = []
        if self._pending is not None:
            self._copy_to_host()
        self.scalars.flush(tensorboard_writer(trainer), force=True)  # the inspections up to a divergence

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        self.scalars.flush(tensorboard_writer(trainer))  # a burst, once enough has gathered

    # -- one inspection -------------------------------------------------------------------------

    def _inspect(self, pl_module: "Trainee", optimizer: Any, step: int, with_grads: bool, final: bool = False) -> None:
        if self._pending is not None:  # an inspection whose update never came (a skipped 16-mixed step)
            self._copy_to_host()
        self._step = step
        params = [p.detach() for p in pl_module.model.parameters()]
        grads = [cast(torch.Tensor, p.grad).detach() for p in pl_module.model.parameters()] if with_grads else []
        have_grads = with_grads and all(g is not None for g in grads)
        names = self._names
        scalars = [([f"weight_norm/{n}" for n in names], foreach_norms(params))]
        if have_grads:
            scalars.append(([f"grad_norm/{n}" for n in names], foreach_norms(grads)))
        scheduled = final or step % self.histogram_every == 0  # histograms and curvature: every few inspections
        drawing = self.histograms and scheduled
        hists = []
        if drawing:
            hists.append(([f"weights/{n}" for n in names], histograms_of(params)))
            if have_grads:
                hists.append(([f"grads/{n}" for n in names], histograms_of(grads)))
        self._pending = (step, scalars, hists)
        self._inspected = (params, grads if have_grads else [])  # what the NaN counts read
        self.scalars.add("lr", optimizer.param_groups[0]["lr"], step)
        if self.activations and not final:  # the final state has no batch of its own
            self._activations(pl_module, step, drawing)
        if self.optimum is not None:
            assert self.train is not None  # fit.py hands the training split with its optimum
            with torch.no_grad():
                full = pl_module.loss_fn(pl_module.model(self.train[0]), self.train[1]).item()
            self.scalars.add("train_loss_full", full, step)
            self.scalars.add("optimality_gap", full - self.optimum, step)
        if self.curvature and scheduled and have_grads:
            self._curvature(pl_module, optimizer, step)
        if have_grads and not final:
            self._before = [p.clone() for p in params]  # the update ratio follows in stepped()
            self._inspected = (self._before, grads)  # the weights as inspected, not as updated
        if trajectory.keeps(sum(p.numel() for p in params), drawing):
            self.trajectory.append((step, torch.cat([p.reshape(-1) for p in params]).float().cpu()))

    def _copy_to_host(self, extra: Optional[list[tuple[list[str], torch.Tensor]]] = None) -> None:
        """One copy of every statistic of the pending inspection to the host, into the buffer:
        ``scalars`` and ``extra`` are (names, [len(names)] values), ``hists`` (names, [len(names), 35])."""
        assert self._pending is not None  # every caller has an inspection pending
        step, scalars, hists = self._pending
        self._pending = None
        scalars = scalars + (extra or [])
        sizes = [len(names) for names, _ in scalars]
        flat = torch.cat([values.reshape(-1).float() for _, values in scalars + hists]).tolist() if scalars else []
        at = 0
        norms = []
        for (names, _), size in zip(scalars, sizes):
            for name, value in zip(names, flat[at : at + size]):
                self.scalars.add(name, value, step)
                if name.startswith(("weight_norm/", "grad_norm/")):
                    norms.append(value)
            at += size
        for names, _ in hists:
            for name in names:
                add_histogram_row(self.scalars, name, flat[at : at + 35], step)
                at += 35
        if not all(map(math.isfinite, norms)):  # a norm went non-finite: where
            self.first_nonfinite = record_nonfinite(self.scalars, self._names, *self._inspected, step, self.first_nonfinite)

    def _activations(self, pl_module: "Trainee", step: int, drawing: bool) -> None:
        """The inspected batch through the model again, under forward hooks removed right after."""
        batch = pl_module.loop.batch
        if not self._layers or not batch:
            return
        assert self._pending is not None  # _inspect set it
        _, scalars, hists = self._pending
        for name, (kind, pre, out) in capture(pl_module.model, self._layers, batch[0][0]).items():
            if drawing:
                hists.append(([f"preactivations/{name}", f"activations/{name}"], histograms(torch.stack([pre.reshape(-1), out.reshape(-1)]))))
            for what, value in unit_fractions(kind, out).items():
                scalars.append(([f"{what}_units/{name}"], value.reshape(1)))

    def _curvature(self, pl_module: "Trainee", optimizer: Any, step: int) -> None:
        assert self.train is not None  # fit.py hands the training split
        unwrapped = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        batch = pl_module.loop.batch
        curvature.record(self.scalars, pl_module.model, pl_module.loss_fn, self.train, unwrapped, batch[0] if batch else None, step)
