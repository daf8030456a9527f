"""Every place microtrain goes around Lightning's per-step machinery (the private Lightning
attributes it needs for that are read through ``microtrain.internals``).

A tiny model's optimizer step takes ~150 us here, and Lightning's per-call and per-hook costs
are of the same size, so each bypass below saves a measured share of a tiny model's step:

* ``StepLoop``: several optimizer steps per Lightning call, and between inspections a plain
  ``loss.backward()`` plus the update of ``engine.step``, counted as Lightning counts a step.
* ``LossWindow``: losses kept on the device instead of ``self.log`` (~0.27 ms a call).
(``run.checkpoints.CheckpointBudget`` keeps ``last.ckpt``, ~1 ms a write, within a share of the training time.)
(The progress bar, ``monitor.progress``, redraws at most 10 times a second for the same reason.)
"""

from typing import TYPE_CHECKING, Any, Optional, Protocol, cast, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import SingleDeviceStrategy

from microtrain import internals
from microtrain.console import one_line
from microtrain.monitor.progress import planned_steps
from microtrain.engine.compiled import CompiledStep, compile_pays, compiled_step
from microtrain.engine.step import Update, clip_gradients, update_rule

if TYPE_CHECKING:  # the callbacks read the module's model, loss and loss window
    from microtrain.engine.module import Trainee


@runtime_checkable
class StepWatcher(Protocol):
    """A callback that must see some steps through Lightning's hooks (``on_before_optimizer_step``)."""

    def needs_hooks(self, step: int) -> bool: ...

    def fixed_grid(self) -> None:
        """Choose the steps by their number alone (``loop.compile``: see ParameterInspector)."""

    def stepped(self, module: "Trainee") -> None:
        """Right after the update of a step that went through Lightning's hooks."""


class StepLoop:
    """How ``Trainee.training_step`` takes each optimizer step.

    Lightning's path (``manual_backward`` and ``LightningOptimizer.step``) runs the callbacks'
    ``on_before_optimizer_step`` and costs ~60 us a step, as long as a tiny model's whole step;
    it is taken for the steps a ``StepWatcher`` asks for, and always under 16-mixed (loss
    scaling) and DDP (whose backward prepares the gradient reducer: every rank takes one path).
    Every other step is ``loss.backward()``, the update rule of ``engine.step`` (torch.optim's
    own ``step()`` where there is none) and the step counted as ``LightningOptimizer`` counts it.
    Gradients are cleared by setting them to None, as ``zero_grad(set_to_none=True)`` does,
    without its profiler wrapper: ~15 us a step.

    Clipping and accumulation are applied here: Lightning refuses both under manual optimization.
    With ``loop.compile`` the plain steps are one ``engine.compiled.CompiledStep`` call each.
    """

    holds_optimizer_state = False  # Trainee.configure_optimizers builds the run's optimizer

    def __init__(self, clip_val: Optional[float] = None, clip_algorithm: str = "norm", accumulate: int = 1, compile: Any = False):
        self.clip_val, self.clip_algorithm, self.accumulate = clip_val, clip_algorithm, accumulate
        self.wants_compile = compile  # true | false | "auto"
        self.multiply_adds = 0  # of one step, for auto
        self.compiled: Optional[CompiledStep] = None
        self.fast = False
        self.step_count = 0
        self._watchers: list[StepWatcher] = []
        self._params: list[torch.Tensor] = []
        self._rule: Optional[Update] = None
        self._module: Optional["Trainee"] = None
        self.batch: list = []  # the batches of the step being taken (inspection forwards them again)

    def start(self, module: "Trainee") -> None:
        trainer = module.trainer
        single = type(trainer.strategy) is SingleDeviceStrategy
        callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it without declaring it on Trainer
        # a callback of the user's that watches backward or the optimizer step sees every step
        self.fast = single and trainer.precision != "16-mixed" and not _step_hooks(callbacks)
        self._watchers = [cb for cb in callbacks if isinstance(cb, StepWatcher)]
        self._module = module
        optimizer = cast(LightningOptimizer, module.optimizers()).optimizer  # configure_optimizers returns one
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._rule = update_rule(optimizer)
        wanted = self.wants_compile
        if wanted == "auto":
            # +trainer.max_time bounds the run by its clock, which compiling would spend: eager (a length not known)
            timed = any(isinstance(cb, L.pytorch.callbacks.Timer) and cb.time_remaining() is not None for cb in trainer.callbacks)  # type: ignore[attr-defined]
            wanted = compile_pays(None if timed else planned_steps(trainer), self.multiply_adds)
        if wanted and self.compiled is None:
            assert trainer.train_dataloader is not None  # on_train_start: Lightning has set up the data
            rows = trainer.train_dataloader.batch_size
            self.compiled, why_not = compiled_step(module, optimizer, self, rows)
            if why_not and trainer.is_global_zero:
                print(f"note: loop.compile is off for this run: {why_not}", flush=True)
            for watcher in self._watchers if self.compiled is not None else ():
                watcher.fixed_grid()

    def call_started(self) -> None:
        """At each Lightning call's start: dynamo's guards off for its compiled steps."""
        if self.compiled is not None:
            self.compiled.skip_guards(True)

    def release(self) -> None:
        """At each call's end, and in ``fit``'s ``finally``: the guards on again."""
        if self.compiled is not None:
            self.compiled.skip_guards(False)

    def whole_step_now(self, group: list) -> bool:
        """Whether this step runs as the compiled graph: a plain step of one batch the graph fits."""
        return self.compiled is not None and self._plain() and self.compiled.ready(group[0][0])

    def whole_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, loss, backward and step as one graph; counted as any plain step is."""
        assert self._module is not None and self.compiled is not None  # start() ran; whole_step_now() said so
        optimizer = self._module.optimizers()
        internals.before_step(optimizer)  # what LightningOptimizer.step does around the step
        try:
            loss = self.compiled(x, y)
        except Exception as err:  # noqa: BLE001 -- a compiler failure must not end the run
            print(f"note: loop.compile failed ({one_line(err)}); training eager", flush=True)
            self.release()
            self.compiled = None
            loss = self._module.loss_fn(self._module.model(x), y)
            loss.backward()
            self.clip()  # as every other path: the compiled graph clips inside, this step must too
            self._plain_update()
        internals.after_step(optimizer)  # counts the step: trainer.global_step
        self.step_count += 1
        return loss.detach()

    def groups(self, batches: list) -> Any:
        """The batches of one call, ``accumulate`` at a time, while the run has steps left."""
        assert self._module is not None  # start() ran
        self.step_count = self._module.trainer.global_step  # read once a call: a chain of lookups
        last = self._module.trainer.max_steps
        for start in range(0, len(batches), self.accumulate):
            if 0 < last <= self.step_count:
                return
            for param in self._params:
                param.grad = None  # optimizer.zero_grad(set_to_none=True)
            self.batch = batches[start : start + self.accumulate]
            yield self.batch

    def _plain(self) -> bool:
        return self.fast and not any(w.needs_hooks(self.step_count) for w in self._watchers)

    def backward(self, loss: torch.Tensor) -> None:
        if self._plain():
            loss.backward()
        else:
            assert self._module is not None  # start() ran
            self._module.manual_backward(loss)  # Lightning's hooks and loss scaling

    def step(self) -> None:
        assert self._module is not None  # start() ran
        optimizer = cast(LightningOptimizer, self._module.optimizers())
        if self._plain():
            self.clip()
            internals.before_step(optimizer)
            self._plain_update()
            internals.after_step(optimizer)  # counts the step: trainer.global_step
        else:
            # Lightning first unscales 16-mixed gradients, then calls on_before_optimizer_step:
            # the callbacks' (ParameterInspector reads this step's weights and gradients, before
            # clipping, as under Lightning's automatic optimization), then Trainee's, which clips.
            optimizer.step()
            for watcher in self._watchers:
                watcher.stepped(self._module)
        self.step_count += 1

    def clip(self) -> None:
        if self.clip_val:
            clip_gradients([p.grad for p in self._params if p.grad is not None], self.clip_val, self.clip_algorithm)

    def _plain_update(self) -> None:
        """The update rule of ``engine.step`` on the gradients in ``.grad``; torch.optim's step() without one."""
        assert self._module is not None  # start() ran
        optimizer = cast(LightningOptimizer, self._module.optimizers()).optimizer
        if self._rule is None:
            optimizer.step()
        else:
            # torch.optim makes a parameter's state slot only when its rule keeps something (not for
            # SGD without momentum), and so does this, so a checkpoint holds what torch.optim's would
            state = optimizer.state
            slots = [state[p] if p in state else {} for p in self._params]
            grads = cast("list[torch.Tensor]", [p.grad for p in self._params])  # backward filled them
            self._rule(self._params, grads, slots, optimizer.param_groups[0])
            for param, slot in zip(self._params, slots):
                if slot and param not in state:
                    state[param] = slot


_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def _step_hooks(callbacks: list) -> bool:
    """Whether a callback other than microtrain's watchers implements a per-step hook."""
    return any(
        getattr(type(cb), hook) is not getattr(L.Callback, hook) for cb in callbacks if not isinstance(cb, StepWatcher) for hook in _STEP_HOOKS
    )


class LossWindow:
    """The training losses of the last few steps, kept on the device.

    Reading a loss with ``.item()`` waits for the device (a CPU-GPU sync point), and
    ``self.log`` costs ~0.27 ms a call; each step only keeps a reference to its (detached) loss,
    and ``LossWatch`` reads the whole window with one copy every N steps.
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.first_step = 0
        self.rows = 0  # training rows seen since the last drain, for samples/s
        self.last_mean: float = float("nan")  # the last window's mean loss, shown by the progress bar

    def add(self, loss: torch.Tensor, step: int, rows: int) -> None:
        if not self.losses:
            self.first_step = step
        self.losses.append(loss)
        self.rows += rows

    def drain(self) -> tuple[int, list[float]]:
        """(1-based number of the first step, the losses) since the last drain; this syncs with the device."""
        values = torch.stack(self.losses).float().tolist() if self.losses else []
        self.losses, self.rows = [], 0
        if values:
            self.last_mean = sum(values) / len(values)
        return self.first_step, values
