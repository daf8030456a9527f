"""The stacked step: K models of one shape trained as one, each job its own.

Every parameter and optimizer-state tensor gets a leading job dimension ``[K, ...]``; each
batch is ``[K, B, ...]`` (every job has its own batch order). The step is a solo run's: forward
(``models.stacked_forward``: a batched product per linear map), each job's loss
(``losses.per_job``), backward (autograd on the sum of the K losses, whose gradient for each
job's weights is that job's own), clipping, and ``engine.step``'s update, once on all the
weights, held as one ``[K, P]`` tensor whose views are the parameters.
The hyper-parameters that differ between jobs (always the learning rate, which schedulers
change) are tensors of K values, met job by job (``engine.step.along``); the rest stay Python
numbers. ``loop.compile`` compiles the same step (gradients by ``torch.func``, as a solo run's
compiled step) into one graph: measured here on the 3->64->1 MLP with 64 jobs, SGD with momentum
4.2 us a job-step against 11.5 eager (Adam 5.3 against 11.3).
"""

import time
from collections.abc import Sequence
from typing import Any, Optional, cast

import torch
from torch import Tensor, nn

from microtrain.console import one_line
from microtrain.engine.compiled import own_code
from microtrain.engine.loss_scale import skip_overflowed, unscaled, updated_scale
from microtrain.engine.step import RULES, along, clip_gradients
from microtrain import losses
from microtrain.models import stacked_forward


def stack_tensors(tensors: Sequence[Tensor], device: torch.device, dtype: torch.dtype) -> Tensor:
    stacked = torch.stack([t.detach() for t in tensors]).to(device)
    return stacked.to(dtype) if stacked.is_floating_point() else stacked


class StackedStep:
    """One optimizer step of K jobs: ``step(x, y)`` updates ``params`` and ``state`` in place and
    returns (the K losses, the K-stacked gradients), without a host sync."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        loss_fn: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        compile: bool = False,
        clip_val: Optional[float] = None,
        clip_algorithm: str = "norm",
        start_step: int = 0,
        accumulate: int = 1,
        loss_scale: Optional[tuple[Tensor, Tensor]] = None,
        solo: bool = False,
    ):
        self.names = [name for name, _ in models[0].named_parameters()]
        self.device, self.dtype = device, dtype
        stacked = [stack_tensors([dict(m.named_parameters())[n] for m in models], device, dtype) for n in self.names]
        self.shapes = [p.shape[1:] for p in stacked]
        # All weights in one [K, P] tensor (the parameters are views of it), the gradients gathered
        # into another: the update is one call of the rule on the whole model, not one a tensor.
        # Measured on the 3->64->1 MLP at K = 1: the update 251 -> 60 us (Adam), 65 -> 16 (SGD).
        # (backward() into .grad views of one tensor saved ~18 us more, but such strided views
        # break autograd's gradient layout contract, and torch warns.)
        self.flat = torch.cat([p.flatten(1) for p in stacked], dim=1)
        self.params = self._split(self.flat)
        self.flat_grad = torch.zeros_like(self.flat)
        # the weights' own storage, for autograd, reused by every step; under autocast, which keeps its
        # casts of leaves until its region ends (a call's steps), the forward reads views of them
        # (.mT, unsqueeze), never the leaves themselves, so each step casts the updated weights
        self._leaves = [p.detach().requires_grad_() for p in self.params]
        # A solo run (a stack of one that was never part of a larger one, ``solo``) takes a plain
        # loop's own step: nn.Linear's kernels on the job's weights (views without the job
        # dimension), the loss module's own reduction, the update with a Python-float learning
        # rate (torch.optim's own operations): bitwise a plain torch loop, and as fast (211 us a
        # step of the 3->64->1 MLP against its 223, SGD). A job resumed alone from a larger stack
        # keeps the batched kernels it started with: its resume is bitwise its group's.
        self.solo = solo and len(models) == 1 and loss_scale is None
        self._one = [p[0].detach().requires_grad_() for p in self.params] if self.solo else None
        self._grad_views = self._split(self.flat_grad)  # the eager step's gradients, per parameter
        # backward() adds a solo step's gradients into flat_grad in place: each weight's .grad is a
        # view of it (contiguous at K = 1, as autograd's layout contract wants): no gather, 18 us less
        for leaf, grad in zip(self._one or [], self._grad_views):
            leaf.grad = grad[0]
        entry = RULES[type(optimizers[0])]  # stack.groups stacks only optimizers that have a rule
        self.rule = entry.update
        owned = [list(m.parameters()) for m in models]
        slots = [[opt.state.get(p, {}) for p in params] for opt, params in zip(optimizers, owned)]
        # every key any job holds (resumed): SGD keeps no momentum buffer for a job without momentum,
        # whose update reads it times 0, so zeros stand in for it
        self.flat_state: dict[str, Tensor] = {}
        for key in dict.fromkeys(key for s in slots for slot in s for key in slot):
            dtype_of = dtype if key != "step" else torch.float32
            each = [
                stack_tensors([s[i].get(key, torch.zeros_like(own[i])) for s, own in zip(slots, owned)], device, dtype_of)
                for i in range(len(stacked))
            ]
            # a count (Adam's step) is one per job, the same for all its tensors: [K]
            self.flat_state[key] = each[0] if each[0].dim() == 1 else torch.cat([t.flatten(1) for t in each], dim=1)
        groups = [opt.param_groups[0] for opt in optimizers]
        self.constants, self.varying = self._hyper(groups, entry.hyper)
        self._solo_hp = {**self.constants, "lr": float(groups[0]["lr"])}  # a solo step's: Python floats, as torch.optim's
        self.clip_val, self.clip_algorithm, self.accumulate = clip_val, clip_algorithm, accumulate
        self.forward, self.losses, self.loss_fn = stacked_forward(models[0]), losses.per_job(loss_fn), loss_fn
        self.rows: Optional[int] = None  # the batch size the compiled graph is for, once compiled
        self.full_rows: Optional[int] = None  # a full batch's (StackedRun): the graph's; an epoch's shorter last batch runs eager
        # 16-mixed: each job's loss scale (engine.loss_scale) and its growth tracker, beside the step (eager)
        self.tracker: Optional[Tensor] = None
        if loss_scale is not None:
            self.varying["loss_scale"], self.tracker = loss_scale

        # dynamic=False: a graph for the full batch; an epoch's shorter last batch runs eager
        # rather than compiling a second graph (seconds) for one step an epoch.
        def graph(flat: Tensor, state: dict[str, Tensor], x: Any, y: Any, varying: dict[str, Any]) -> Any:
            return self._graph_step(flat, state, x, y, varying)

        self._compiled = torch.compile(own_code(graph), dynamic=False) if compile and loss_scale is None else None
        self.compile_seconds: Optional[float] = None
        # The run's very first step creates the optimizer state, eager; every later one (a resumed
        # run's first step included, so a resume is bitwise) is the one compiled graph.
        self.taken = start_step

    def _hyper(self, groups: list[dict[str, Any]], keys: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(hyper-parameters all jobs share, as Python values; the others as tensors of K)."""
        values = {key: [g[key] for g in groups] for key in keys}
        if "dampening" in values:  # torch.optim's SGD ignores dampening without momentum
            values["dampening"] = [d if m else 0.0 for d, m in zip(values["dampening"], values["momentum"])]
        constants: dict[str, Any] = {}
        varying: dict[str, Any] = {}
        for key, per_job in values.items():
            if key != "lr" and all(v == per_job[0] for v in per_job):
                constants[key] = per_job[0]
            elif key == "betas":
                varying[key] = tuple(torch.tensor([b[i] for b in per_job], dtype=torch.float64, device=self.device) for i in (0, 1))
            elif key == "nesterov":
                varying[key] = torch.tensor(per_job, dtype=torch.bool, device=self.device)
            else:
                varying[key] = torch.tensor([float(v) for v in per_job], dtype=torch.float64, device=self.device)
        return constants, varying

    def _loss(self, params: Sequence[Tensor], x: Any, y: Any) -> Tensor:
        """The K jobs' losses; with ``trainer.accumulate_grad_batches``, a step's batches (lists)
        each divided by ``accumulate`` and summed, as a solo run's step adds theirs."""
        if self.accumulate == 1:
            return self.losses(self.forward(params, x), y)
        total = self.losses(self.forward(params, x[0]), y[0]) / self.accumulate
        for xs, ys in zip(x[1:], y[1:]):
            total = total + self.losses(self.forward(params, xs), ys) / self.accumulate
        return total

    def _split(self, flat: Tensor) -> list[Tensor]:
        """Views of a [K, P] tensor as the K-stacked tensors of each parameter."""
        views, at = [], 0
        for shape in self.shapes:
            size = shape.numel()
            views.append(flat[:, at : at + size].view(-1, *shape))
            at += size
        return views

    @property
    def state(self) -> list[dict[str, Tensor]]:
        """Each parameter's optimizer state, as torch.optim keeps it: views of the flat tensors."""
        views = {key: self._split(value) if value.dim() == 2 else [value] * len(self.shapes) for key, value in self.flat_state.items()}
        return [{key: each[i] for key, each in views.items()} for i in range(len(self.shapes))]

    def _step(self, x: Any, y: Any, varying: dict[str, Any]) -> Any:
        """Forward, loss, backward, update: the eager step (autograd), in place; returns (the K
        losses, the gradients [K, P] before clipping, as a solo run's inspection reads them)."""
        if self._one is not None:  # a solo run: one model, a plain loop's kernels
            self.flat_grad.zero_()  # backward adds into it, through each weight's .grad (a view of it)
            total = None
            for xs, ys in zip(x, y) if self.accumulate > 1 else [(x, y)]:  # each batch [1, B, ...]
                prediction = self.forward(self._one, xs[0])  # forward
                loss = self.loss_fn(prediction, ys[0])  # loss
                if self.accumulate > 1:
                    loss = loss / self.accumulate  # as Lightning's accumulation: gradients average
                loss.backward()  # backward
                total = loss.detach() if total is None else total + loss.detach()
            self._update(self.flat, self.flat_grad, self.flat_state, self._solo_hp)  # step: clip, then the rule
            return cast(Tensor, total).unsqueeze(0), self.flat_grad
        scale = varying.get("loss_scale")
        losses = self._loss(self._leaves, x, y)  # forward and loss, each job's
        grads = torch.autograd.grad((losses * scale if scale is not None else losses).sum(), self._leaves)  # backward
        torch.cat([g.reshape(len(self.flat), -1) for g in grads], dim=1, out=self.flat_grad)
        if scale is None:
            self._update(self.flat, self.flat_grad, self.flat_state, varying)  # step: clip, then the rule
            return losses.detach(), self.flat_grad
        (grad,), found = unscaled([self.flat_grad], scale)  # 16-mixed: a job whose gradients overflowed skips its update
        with skip_overflowed(found, [self.flat], [self.flat_state]):
            self._update(self.flat, grad, self.flat_state, varying)
        return losses.detach(), grad, found

    def _graph_step(self, flat: Tensor, state: dict[str, Tensor], x: Any, y: Any, varying: dict[str, Any]) -> Any:
        """``_step`` with the gradients of ``torch.func``, which ``torch.compile`` traces as one graph
        (``backward()`` would split it, as a solo run's compiled step: ``engine.compiled``)."""

        def total(weights: Tensor) -> tuple[Tensor, Tensor]:
            losses = self._loss(self._split(weights), x, y)
            return losses.sum(), losses

        grad, (_, losses) = torch.func.grad_and_value(total, has_aux=True)(flat)
        # updated copies, written back by the caller: inductor (torch 2.13) failed to compile the
        # update in place on an input whose views the forward read (KeyError: 'buf14')
        flat, state = flat.clone(), {key: value.clone() for key, value in state.items()}
        self._update(flat, grad, state, varying)
        return losses, grad, flat, state

    def _update(self, flat: Tensor, grad: Tensor, state: dict[str, Tensor], varying: dict[str, Any]) -> None:
        """Clip a copy of the gradients (each job by its own norm), then the update of all weights
        at once, the per-job values shaped [K, 1] to meet them."""
        if self.clip_val:  # each job's norm over its tensors' norms, as clip_grad_norm_ takes it
            grad = grad.clone()
            clip_gradients(self._split(grad), self.clip_val, self.clip_algorithm, stacked=True)
        hp = {**self.constants, **{key: _along(value, flat) for key, value in varying.items() if key != "loss_scale"}}
        view = {key: along(value, flat) for key, value in state.items()}  # a job's step count [K] -> [K, 1]
        self.rule([flat], [grad], [view], hp)
        for key, value in view.items():
            if key not in state:  # made by the first step (Adam's step count: one for all K): each job its own
                state[key] = value.expand(len(flat)).clone().to(self.device) if value.dim() == 0 else value

    def skip_guards(self, on: bool) -> None:
        """Dynamo's guards re-check every input of the compiled graph at every call; during a
        Lightning call of compiled steps what can change is checked here (the batch's rows; the
        state's keys and the hyper-parameters' tensors are the same objects), as on Lightning's
        path (``engine.compiled.CompiledStep.skip_guards``)."""
        if not on or (self._compiled is not None and self.rows is not None):  # off whatever happened (a compiler failure drops the graph)
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=on)

    def set_lr(self, lrs: Sequence[float]) -> None:
        """New learning rates (a scheduler's epoch step): written into the same tensor, so the
        compiled graph needs no recompile."""
        self.varying["lr"].copy_(torch.tensor(list(lrs), dtype=torch.float64))
        self._solo_hp["lr"] = float(lrs[0])

    def __call__(self, x: Any, y: Any) -> tuple[Tensor, list[Tensor]]:
        first = not self.taken  # the first step creates the optimizer state: eager, then one compiled graph
        rows = len(x[0]) if self.accumulate == 1 else None
        if self._compiled is not None and not first and rows == self.full_rows:
            started = time.perf_counter()
            try:
                loss, grad, flat, state = self._compiled(self.flat, self.flat_state, x, y, self.varying)
            except Exception as err:  # noqa: BLE001 -- a compiler failure must not end the run: the eager step, which clips as this graph does
                print(f"note: loop.compile failed ({one_line(err)}); training eager", flush=True)
                self._compiled = None
                return self(x, y)
            if self.rows is None:
                self.rows, self.compile_seconds = rows, time.perf_counter() - started
            self.flat.copy_(flat)  # in place: the parameters are views of it
            self.flat_state.update(state)
        elif self.tracker is not None:  # 16-mixed: each job's scale then moves as its GradScaler's
            loss, grad, found = self._step(x, y, self.varying)
            self.varying["loss_scale"], self.tracker = updated_scale(self.varying["loss_scale"], self.tracker, found)
        else:
            loss, grad = self._step(x, y, self.varying)
        self.taken += 1
        return loss, self._grad_views if grad is self.flat_grad else self._split(grad)

    def job_state(self, k: int, tensors: Optional[list[Tensor]] = None) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Job k's parameters by name and its optimizer state per parameter, on the CPU, as its
        torch.optim keeps them; ``tensors``: the parameters then the state's values, in ``state``'s
        order, from elsewhere than the live step (``stack.best``: a kept epoch)."""
        live = [*self.params, *(value for slot in self.state for value in slot.values())]
        taken = iter(tensors if tensors is not None else live)
        params = {name: next(taken)[k].detach().cpu().clone() for name in self.names}
        momentum = self.varying.get("momentum", self.constants.get("momentum"))
        idle = momentum is not None and not float(momentum[k] if isinstance(momentum, Tensor) else momentum)
        state = []
        for slot in self.state:
            # torch.optim keeps no momentum buffer for a job without momentum; the stack holds one for all K
            state.append({key: value[k].detach().cpu().clone() for key, value in zip(slot, taken) if not (idle and key == "momentum_buffer")})
        return params, state


def _along(value: Any, param: Tensor) -> Any:
    """A hyper-parameter of the K jobs shaped to meet one stacked parameter (betas: a pair)."""
    if isinstance(value, tuple):
        return tuple(_along(v, param) for v in value)
    return along(value, param) if isinstance(value, Tensor) else value


class StackedModel(nn.Module):
    """The K jobs' models as one module for ``Trainee``: x ``[K, B, ...]`` -> ``[K, B, outputs]``.
    The weights are the stacked step's tensors, kept unregistered: Lightning moves and casts none
    of them (the step placed them) and builds no optimizer over them."""

    def __init__(self, step: StackedStep):
        super().__init__()
        self.stacked = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stacked.forward(self.stacked.params, x)
