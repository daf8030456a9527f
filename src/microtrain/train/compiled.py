"""``loop.compile``: the whole step (forward, loss, gradients by ``torch.func``, clipping and the
optimizer update) traced by ``torch.compile`` into one graph.

Why one graph: a tiny model's eager step is almost all dispatch, and compiling the model alone
with ``loss.backward()`` and ``optimizer.step()`` is slower than eager, because ``backward()``
splits the graph (../shared/MEASURED.md: 666-785 against 390-435 us a step; ``torch.func.grad``
and the update compiled as one function: 148-239 us).

The update is ``train.step``'s SGD / Adam / AdamW with the hyper-parameters as 0-d tensors, so
a scheduler's new learning rate is a new value, not a recompile. The state is torch.optim's own
(``optimizer.state[p]``), updated in place, so checkpoints, resume, inspection and
``explain_step`` see what they see today. Its numbers match the eager step to rounding (the
tests check 1e-5 after 1000 steps), not bitwise: the compiled kernels fuse and reorder.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor

from microtrain.train.step import Params, State, clip_gradients, functional_forward

# The hyper-parameters each rule reads, handed to the graph as 0-d tensors.
HYPER = {"sgd": ("lr", "momentum", "dampening", "weight_decay"), "adam": ("lr", "beta1", "beta2", "eps", "weight_decay")}


def sgd_tensors(params: Params, grads: Sequence[Tensor], state: Sequence[Tensor], hp: dict[str, Tensor], nesterov: bool) -> None:
    """SGD with its state as tensors: ``state[i]`` is the momentum buffer (already started)."""
    for param, grad, buf in zip(params, grads, state):
        grad = grad + hp["weight_decay"] * param
        buf.mul_(hp["momentum"]).add_((1 - hp["dampening"]) * grad)
        grad = grad + hp["momentum"] * buf if nesterov else buf
        param.sub_(hp["lr"] * grad)


def sgd_plain(params: Params, grads: Sequence[Tensor], state: Sequence[Tensor], hp: dict[str, Tensor], nesterov: bool) -> None:
    """SGD without momentum: no state."""
    for param, grad in zip(params, grads):
        param.sub_(hp["lr"] * (grad + hp["weight_decay"] * param))


def adam_tensors(params: Params, grads: Sequence[Tensor], state: Sequence[Tensor], hp: dict[str, Tensor], decoupled: bool) -> None:
    """Adam / AdamW with ``state[i] = (step, exp_avg, exp_avg_sq)``; bias corrections from the step tensor."""
    for param, grad, (step, exp_avg, exp_avg_sq) in zip(params, grads, state):
        step.add_(1)
        if decoupled:
            param.mul_(1 - hp["lr"] * hp["weight_decay"])
        else:
            grad = grad + hp["weight_decay"] * param
        exp_avg.lerp_(grad, 1 - hp["beta1"])
        exp_avg_sq.mul_(hp["beta2"]).add_((1 - hp["beta2"]) * grad * grad)
        correction1 = 1 - hp["beta1"] ** step
        correction2 = 1 - hp["beta2"] ** step
        denom = exp_avg_sq.sqrt() / correction2.sqrt() + hp["eps"]
        param.sub_(hp["lr"] / correction1 * exp_avg / denom)


class CompiledStep:
    """One compiled optimizer step on the model's own parameters and the optimizer's own state.

    ``supported(optimizer)`` says whether there is a compiled rule; ``__call__(x, y)`` returns the
    loss. The first call compiles (seconds), which ``compile_seconds`` records.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 clip_val: Optional[float], clip_algorithm: str, mode: Optional[str] = None):
        self.optimizer = optimizer
        self.group = optimizer.param_groups[0]
        self.kind = kind(optimizer)
        self.params = [p.detach() for p in self.group["params"]]  # the model's own storage
        self._owners = list(self.group["params"])
        # float64 0-d tensors: as exact as torch.optim's Python floats, and (0-d) they leave the
        # parameters' dtype alone
        self._hp = {name: torch.zeros((), dtype=torch.float64, device=self.params[0].device) for name in HYPER[self.kind]}
        self._values: tuple = ()
        forward = functional_forward(model)
        flag = bool(self.group.get("nesterov")) if self.kind == "sgd" else self.group.get("decoupled_weight_decay", False)
        rule = adam_tensors if self.kind == "adam" else sgd_tensors if self.group["momentum"] else sgd_plain

        def step(params: Params, state: Any, x: Tensor, y: Tensor, hp: dict[str, Tensor]) -> Tensor:
            def loss_at(p: Params) -> Tensor:
                return loss_fn(forward(p, x), y)  # forward, loss

            grads, loss = torch.func.grad_and_value(loss_at)(tuple(params))  # backward
            grads = list(grads)
            clip_gradients(grads, clip_val, clip_algorithm)
            rule(params, grads, state, hp, flag)  # step
            return loss

        self._compiled = torch.compile(step, fullgraph=True, dynamic=False, mode=mode)
        self.compile_seconds: Optional[float] = None
        self._shape: Optional[torch.Size] = None

    def ready(self, x: Tensor) -> bool:
        """Whether this batch runs compiled: the state exists (after one eager step: SGD's buffer
        starts as the first gradient) and the batch has the shape the graph was compiled for (an
        epoch's shorter last batch runs eager rather than compiling a second graph, seconds)."""
        if self._shape is not None:
            return x.shape == self._shape
        needs_state = self.kind == "adam" or self.group["momentum"]
        return not needs_state or all(self.optimizer.state[p] for p in self._owners)

    @contextmanager
    def guards_skipped(self) -> Iterator[None]:
        """Around one Lightning call of compiled steps: dynamo's guards re-check every input
        (~40 us a step here, a third of the compiled step) and ``ready`` already holds the only
        thing that changes, the batch's shape. Scoped to the call, so nothing else sees it."""
        if self._shape is None:
            yield
            return
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            yield

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        group = self.group
        values = {"lr": group["lr"], "weight_decay": group["weight_decay"]}
        if self.kind == "sgd":
            values |= {"momentum": group["momentum"], "dampening": group["dampening"]}
        else:
            values |= {"beta1": group["betas"][0], "beta2": group["betas"][1], "eps": group["eps"]}
        if tuple(values.values()) != self._values:  # a scheduler changed the lr: new values, no recompile
            for name, value in values.items():
                self._hp[name].fill_(value)
            self._values = tuple(values.values())
        state = self._state()
        if self.compile_seconds is None:
            started = time.perf_counter()
            loss = self._compiled(self.params, state, x, y, self._hp)
            self.compile_seconds = time.perf_counter() - started
            self._shape = x.shape
            return loss
        return self._compiled(self.params, state, x, y, self._hp)

    def _state(self) -> list:
        slots = [self.optimizer.state[p] for p in self._owners]
        if self.kind == "adam":
            return [(s["step"], s["exp_avg"], s["exp_avg_sq"]) for s in slots]
        return [s["momentum_buffer"] for s in slots] if self.group["momentum"] else []


def compiled_step(module: Any, optimizer: torch.optim.Optimizer, loop: Any) -> tuple[Optional[CompiledStep], str]:
    """(the compiled step of this run, "") or (None, why it runs eager)."""
    if kind(optimizer) is None:
        return None, f"{type(optimizer).__name__} with these settings has no compiled update; training eager"
    if loop.accumulate != 1:
        return None, "trainer.accumulate_grad_batches is not compiled; training eager"
    if not loop.fast:
        return None, "several devices or 16-mixed precision step through Lightning; training eager"
    cuda = module.device.type == "cuda"
    # CUDA graphs replay a tiny model's kernels without launching them one by one from Python
    mode = "reduce-overhead" if cuda and sum(p.numel() for p in module.model.parameters()) <= CUDA_GRAPH_PARAMETERS else None
    return CompiledStep(module.model, module.loss_fn, optimizer, loop.clip_val, loop.clip_algorithm, mode), ""


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


def kind(optimizer: torch.optim.Optimizer) -> Optional[str]:
    """"sgd" or "adam" when the compiled step has the optimizer's rule, else None (eager, said in one line)."""
    from microtrain.train.step import update_rule

    rule = update_rule(optimizer)
    if rule is None:
        return None
    return "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"
