"""``loop.compile``: the whole step (forward, loss, gradients by ``torch.func``, clipping and the
optimizer update) traced by ``torch.compile`` into one graph.

Why one graph: a tiny model's eager step is almost all dispatch, and compiling the model alone
with ``loss.backward()`` and ``optimizer.step()`` is slower than eager, because ``backward()``
splits the graph (../shared/MEASURED.md: 666-785 against 390-435 us a step; ``torch.func.grad``
and the update compiled as one function: 148-239 us).

The step is ``engine.step.train_step`` with the update of ``engine.step.RULES``, and the learning rate
as a 0-d tensor, so a scheduler's new value is not a recompile. The state is torch.optim's own
(``optimizer.state[p]``), updated in place, so checkpoints, resume, inspection and
``explain_step`` see what they see today. Its numbers match the eager step to rounding (the
tests check 1e-5 after 1000 steps), not bitwise: the compiled kernels fuse and reorder.
"""

import time
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor

from microtrain.engine.step import rule_of, train_step, update_rule
from microtrain.models import functional_forward


class CompiledStep:
    """``engine.step.train_step`` compiled, on the model's own parameters and the optimizer's own state.

    ``__call__(x, y)`` returns the loss; the first call compiles (seconds: ``compile_seconds``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        clip_val: Optional[float],
        clip_algorithm: str,
        batch_rows: int,
        mode: Optional[str] = None,
    ):
        self.optimizer, self.group = optimizer, optimizer.param_groups[0]
        self._owners = list(self.group["params"])
        self.params = [p.detach() for p in self._owners]  # the model's own storage
        self.batch_rows = batch_rows
        # lr as a 0-d float64 tensor: a scheduler's new value needs no recompile, it is as exact as
        # torch.optim's Python float, and (0-d) it leaves the parameters' dtype alone
        self._lr = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        self._lr_value = 0.0
        self._constants = self._other_values()  # compiled into the graph as constants
        self._clone_loss = mode == "reduce-overhead"  # a CUDA graph's output is overwritten by the next replay
        self._marked = False  # see _static_addresses
        forward, update = functional_forward(model), update_rule(optimizer)
        rule = rule_of(type(optimizer))
        assert update is not None and rule is not None  # compiled_step builds one only for an optimizer with a rule
        self._rule = rule

        def step(params: list[Tensor], state: list[dict], x: Tensor, y: Tensor, hp: dict[str, Any]) -> Tensor:
            loss, _ = train_step(
                params, state, (x, y), hp, forward=forward, loss_fn=loss_fn, update=update, clip_val=clip_val, clip_algorithm=clip_algorithm
            )
            return loss

        self._compiled = torch.compile(own_code(step), fullgraph=True, dynamic=False, mode=mode)
        self.compile_seconds: Optional[float] = None

    def _other_values(self) -> tuple:
        return tuple((k, v) for k, v in self.group.items() if k not in ("params", "lr"))

    def ready(self, x: Tensor) -> bool:
        """Whether this batch runs compiled: a full batch (an epoch's shorter last one runs eager
        rather than compiling a second graph, seconds), the state exists (after one eager step:
        SGD's buffer starts as the first gradient), and no hyper-parameter but lr changed (a
        scheduler that cycles momentum: those steps run eager)."""
        if len(x) != self.batch_rows or self._other_values() != self._constants:
            return False
        needs_state = self._rule.keeps_state(self.group)
        return not needs_state or all(self.optimizer.state[p] for p in self._owners)

    def skip_guards(self, on: bool) -> None:
        """Dynamo's guards re-check every input at every call (~40 us a step here, a third of the
        compiled step); ``ready`` already checks the only things that can change. Turned on for
        one Lightning call of compiled steps, and off after it (``fit`` also turns it off in a
        ``finally``), so nothing else in the process sees it."""
        if self.compile_seconds is not None:
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=on)

    def _static_addresses(self, state: list[dict]) -> None:
        """Under CUDA graphs, the weights and optimizer state the graph updates in place are marked
        as living at fixed addresses, as parameters are: inductor skips CUDA graphs for a graph
        that mutates any other input ("skipping cudagraphs due to mutated inputs")."""
        # (Adam's step count stays on the CPU, as torch.optim keeps it: its graphs run without CUDA graphs)
        for tensor in [*self.params, *(t for slot in state for t in slot.values() if isinstance(t, Tensor) and t.is_cuda)]:
            torch._dynamo.mark_static_address(tensor, guard=False)
        self._marked = True

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if self._clone_loss and not self._marked:
            self._static_addresses([self.optimizer.state[p] for p in self._owners])
        if self._lr_value != self.group["lr"]:  # kept as a float too: reading the tensor could sync a GPU
            self._lr.fill_(self.group["lr"])
            self._lr_value = self.group["lr"]
        # not the group's "params": Parameters aliasing self.params would be inputs of the graph too,
        # and aliased inputs that the graph mutates read stale values (weight decay went wrong)
        hp = {**dict(self._constants), "lr": self._lr}
        state = [self.optimizer.state[p] for p in self._owners]
        started = time.perf_counter()
        loss = self._compiled(self.params, state, x, y, hp)
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - started
        return loss.clone() if self._clone_loss else loss


def own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own. Dynamo keeps compiled graphs per code object, at most
    8 (its recompile_limit), and every step made from the same source shares one: the ninth run
    compiled in one process (a sweep's jobs, a notebook, the test suite) failed with
    FailOnRecompileLimitHit. A copy of the code gives each step its own cache, freed with it."""
    import types

    if not isinstance(fn, types.FunctionType):
        return fn
    fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    fresh.__kwdefaults__ = fn.__kwdefaults__
    fresh.__dict__.update(fn.__dict__)  # functools.wraps' __wrapped__ (torch.func.vmap's wrapper) included
    return fresh


def compiled_step(module: Any, optimizer: torch.optim.Optimizer, loop: Any, batch_rows: int) -> tuple[Optional[CompiledStep], str]:
    """(the compiled step of this run, "") or (None, why it runs eager)."""
    if update_rule(optimizer) is None:
        return None, f"{type(optimizer).__name__} with these settings has no compiled update; training eager"
    if loop.accumulate != 1:
        return None, "trainer.accumulate_grad_batches is not compiled; training eager"
    if not loop.fast:
        return None, "several devices or 16-mixed precision step through Lightning; training eager"
    cuda = module.device.type == "cuda"
    # CUDA graphs replay a tiny model's kernels without launching them one by one from Python
    mode = "reduce-overhead" if cuda and sum(p.numel() for p in module.model.parameters()) <= CUDA_GRAPH_PARAMETERS else None
    return CompiledStep(module.model, module.loss_fn, optimizer, loop.clip_val, loop.clip_algorithm, batch_rows, mode), ""


# loop.compile=auto. Measured here on the 3->64->1 MLP (batch 32): a compiled step saves ~100-140 us
# of ~300, and compiling takes ~4 s with inductor's cache warm (18 s on a fresh machine). A run of
# 100 000 steps saves 10-14 s: auto compiles runs at least that long. Models above 1 M
# multiply-adds a step are compute-bound (eager reaches 83 % of the matmul peak), so little is saved.
AUTO_MIN_STEPS = 100_000
AUTO_MAX_MULTIPLY_ADDS = 1_000_000


def compile_pays(planned: Optional[float], multiply_adds: int) -> bool:
    """``loop.compile=auto``: whether compiling pays back in this run (a run of unknown length never compiles)."""
    return planned is not None and planned >= AUTO_MIN_STEPS and multiply_adds <= AUTO_MAX_MULTIPLY_ADDS


CUDA_GRAPH_PARAMETERS = 1_000_000  # models up to this size are launch-bound on a GPU


# loop.compile=auto compiles a stack's step when it saves more than it costs: ~6-7 us a job-step
# (3->64->1 MLP, 64 jobs: SGD with momentum 11.5 eager against 4.2 compiled, Adam 11.3 against
# 5.3), against 2-5 s of compiling with a warm cache: it pays after 340k-730k job-steps.
COMPILE_FROM_JOB_STEPS = 500_000
# A solo run (a stack of one, a plain loop's kernels eager) compiles from AUTO_MIN_STEPS: 92-96 us
# a step eager against 68-70 compiled (3->64->1 MLP, one thread, guards skipped during a call),
# ~25 us saved a step against ~1.9 s of compiling with a warm cache: it pays after ~80k steps.


def compiles(cfg: Any, planned: int, jobs: int, multiply_adds: int, solo: bool) -> bool:
    """``loop.compile`` (true, false or auto) for a stack of ``jobs`` that plans ``planned`` steps
    (``solo``: a solo run). Accumulation and 16-mixed train eager."""
    wanted = cfg.loop.compile
    enough = planned >= AUTO_MIN_STEPS if solo else planned * jobs >= COMPILE_FROM_JOB_STEPS
    pays = enough and multiply_adds <= AUTO_MAX_MULTIPLY_ADDS and not cfg.trainer.get("max_time")  # a timed run's length is not known
    eager = "device.precision=16-mixed" if str(cfg.device.precision) == "16-mixed" else None
    eager = eager or ("trainer.accumulate_grad_batches" if cfg.trainer.get("accumulate_grad_batches", 1) > 1 else None)
    if eager and wanted is True:
        print(f"note: {eager} is not compiled; training eager", flush=True)
    return not eager and (wanted is True or (wanted == "auto" and pays))
