"""The training step, written once as plain functions of (parameters, optimizer state, batch,
hyper-parameters): forward, loss, backward, gradient clipping, optimizer update.

* ``params``: the model's parameter tensors, in ``named_parameters`` order.
* ``state``: one dict per parameter, torch.optim's own per-parameter state
  (``optimizer.state[p]``: ``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``), so
  checkpoints, resume and ``explain_step`` see exactly what ``torch.optim`` would hold.
* ``hp``: torch.optim's param group (``lr``, ``momentum``, ``betas``, ...), which schedulers change.
  ``lr`` is a Python float (eager: torch.optim's own operations, bitwise) or a 0-d tensor (the
  compiled step: a scheduler's new value then needs no recompile). For K stacked jobs
  (``stack.step``: every parameter and state tensor ``[K, ...]``) any of them may be a tensor of
  one value per job (float64), shaped ``[K, 1, ...]`` to meet the parameter (``along``): a tensor
  takes the branch-free path, where a job with momentum or weight decay 0 multiplies by 0, which
  changes no finite number.

The updates do the same operations in the same order as torch.optim's single-tensor SGD,
Adam, AdamW, RMSprop and Adagrad (the CPU default), in ``engine.exact``'s arithmetic, so their
weights are bitwise equal, for one model and for each job of a stack on the CPU
(``tests/test_step.py``). ``RULES`` says, once, what each supports. Eager training applies them
to ``.grad`` filled by ``loss.backward()``; ``train_step`` is the pure form, with ``torch.func``
gradients, that ``explain_step`` runs and that ``torch.compile`` traces as one graph.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch
from torch import Tensor

from microtrain.engine.exact import add, addcdiv, addcmul, count, like, on, power

Params = Sequence[Tensor]
State = Sequence[dict[str, Any]]
Hyper = Mapping[str, Any]
Update = Callable[[Params, Sequence[Tensor], State, Hyper], None]


@torch.no_grad()
def sgd(params: Params, grads: Sequence[Tensor], state: State, hp: Hyper) -> None:
    """d = grad (+ weight_decay·w); buf = momentum·buf + (1 − dampening)·d (buf = d at first);
    d = buf, or d + momentum·buf with Nesterov; w = w − lr·d."""
    lr, momentum, dampening, decay, nesterov = (hp[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov"))
    for param, grad, slot in zip(params, grads, state):
        if on(decay):
            grad = add(grad, param, decay)
        if on(momentum):
            buf = slot.get("momentum_buffer")
            if buf is None:
                buf = slot["momentum_buffer"] = grad.detach().clone()
            else:
                add(buf.mul_(like(momentum, buf)), grad, 1 - dampening, inplace=True)
            if isinstance(nesterov, Tensor):  # one flag per stacked job
                grad = torch.where(nesterov, add(grad, buf, momentum), buf)
            else:
                grad = add(grad, buf, momentum) if nesterov else buf
        add(param, grad, -lr, inplace=True)


@torch.no_grad()
def adam(params: Params, grads: Sequence[Tensor], state: State, hp: Hyper, decoupled: bool = False) -> None:
    """m = β1·m + (1 − β1)·g; v = β2·v + (1 − β2)·g²; w = w − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + eps).
    Adam adds weight_decay·w to g; AdamW (decoupled) multiplies w by (1 − lr·weight_decay) first."""
    lr, (beta1, beta2), eps, decay = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    for param, grad, slot in zip(params, grads, state):
        if not slot:
            slot["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())  # on the CPU, as torch.optim keeps it
            slot["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            slot["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        slot["step"] += 1
        if on(decay):
            if decoupled:
                param.mul_(like(1 - lr * decay, param))
            else:
                grad = add(grad, param, decay)
        slot["exp_avg"].lerp_(grad, like(1 - beta1, param))  # beta1 may be one per stacked job, [K, 1, ...]
        addcmul(slot["exp_avg_sq"].mul_(like(beta2, param)), grad, grad, 1 - beta2)
        # torch.optim's bias corrections are Python floats (a CPU tensor's item: no device sync);
        # the compiled and stacked steps keep them tensors, one graph with no host round trip, in
        # float64 as Python's floats are: 1 − β2ᵗ in float32 is off by ~1e-4 of itself early on,
        # which drifted stacked AdamW jobs 0.05 from their solo runs in 100 steps (measured).
        step = count(slot["step"], lr)
        denom = (slot["exp_avg_sq"].sqrt() / like(power(1 - power(beta2, step), 0.5), param)).add_(like(eps, param))
        addcdiv(param, slot["exp_avg"], denom, -lr / (1 - power(beta1, step)))


@torch.no_grad()
def rmsprop(params: Params, grads: Sequence[Tensor], state: State, hp: Hyper) -> None:
    """v = α·v + (1 − α)·g²; avg = √v + eps (centered: √(v − ḡ²) + eps, ḡ = α·ḡ + (1 − α)·g);
    w = w − lr·g/avg, or with momentum buf = momentum·buf + g/avg and w = w − lr·buf."""
    lr, alpha, eps, decay, momentum, centered = (hp[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"))
    for param, grad, slot in zip(params, grads, state):
        if not slot:  # torch.optim makes the slots at the first step
            slot["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            slot["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if on(momentum):
                slot["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if centered:
                slot["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        slot["step"] += 1
        if on(decay):
            grad = add(grad, param, decay)
        square_avg = addcmul(slot["square_avg"].mul_(like(alpha, param)), grad, grad, 1 - alpha)
        if centered:
            grad_avg = slot["grad_avg"]
            if torch.compiler.is_compiling():
                grad_avg.add_((grad - grad_avg) * like(1 - alpha, param))
            else:
                grad_avg.lerp_(grad, like(1 - alpha, param))
            avg = addcmul(square_avg.clone(), grad_avg, grad_avg, -1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(like(eps, param))
        if on(momentum):
            buf = addcdiv(slot["momentum_buffer"].mul_(momentum), grad, avg, 1)
            add(param, buf, -lr, inplace=True)
        else:
            addcdiv(param, grad, avg, -lr)


@torch.no_grad()
def adagrad(params: Params, grads: Sequence[Tensor], state: State, hp: Hyper) -> None:
    """s = s + g²; w = w − lr/(1 + (t − 1)·lr_decay) · g/(√s + eps). The sums start at
    ``initial_accumulator_value`` when the optimizer is built, as torch.optim makes them."""
    lr, lr_decay, decay, eps = hp["lr"], hp["lr_decay"], hp["weight_decay"], hp["eps"]
    for param, grad, slot in zip(params, grads, state):
        slot["step"] += 1
        step = count(slot["step"], lr)
        if on(decay):
            grad = add(grad, param, decay)
        total = addcmul(slot["sum"], grad, grad, 1)
        addcdiv(param, grad, total.sqrt().add_(like(eps, param)), -lr / (1 + (step - 1) * lr_decay))


@dataclass(frozen=True)
class Rule:
    """An optimizer's update and what it takes, read by the eager, compiled, stacked and explained
    steps. Adding an optimizer is one rule here and one YAML file in conf/optimizer/."""

    update: Update
    hyper: tuple[str, ...]  # the param-group values the update reads
    per_job: tuple[str, ...]  # those a job of a stacked group may hold for itself (the others: one per group)
    keeps_state: Callable[[Hyper], bool]  # whether it keeps per-parameter state with these settings
    off: tuple[str, ...] = ("maximize", "foreach", "fused", "capturable", "differentiable")  # torch.optim settings it
    # does not implement: with one of them on (true), torch.optim's own step() runs instead


def _always(group: Hyper) -> bool:
    return True  # a rule whose state exists from its first step, whatever the settings


_SGD = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
_ADAM = ("lr", "betas", "eps", "weight_decay")
RULES: dict[type, Rule] = {
    torch.optim.SGD: Rule(sgd, _SGD, _SGD, lambda group: bool(group["momentum"])),
    # Adam(decoupled_weight_decay=True) is AdamW's update under Adam's name: torch.optim's own step
    torch.optim.Adam: Rule(adam, _ADAM, _ADAM, _always, (*Rule.off, "amsgrad", "decoupled_weight_decay")),
    # AdamW by its class: the param group's "decoupled_weight_decay" key is recent in torch
    torch.optim.AdamW: Rule(partial(adam, decoupled=True), _ADAM, _ADAM, _always, (*Rule.off, "amsgrad")),
    # momentum and centered decide which state exists: one value per stacked group
    torch.optim.RMSprop: Rule(
        rmsprop, ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"), ("lr", "alpha", "eps", "weight_decay"), _always
    ),
    # the sums start at initial_accumulator_value, built into each job's state before the stack forms
    torch.optim.Adagrad: Rule(
        adagrad, ("lr", "lr_decay", "weight_decay", "eps"), ("lr", "lr_decay", "weight_decay", "eps", "initial_accumulator_value"), _always
    ),
}


def rule_of(optimizer_class: type, settings: Optional[Hyper] = None) -> Optional[Rule]:
    """The rule for this class, or None: another class, or a setting it does not implement on."""
    rule = RULES.get(optimizer_class)
    return None if rule is None or settings is not None and any(settings.get(key) for key in rule.off) else rule


def update_rule(optimizer: torch.optim.Optimizer) -> Optional[Update]:
    """The rule above for this optimizer, or None when it has none (another class, several param
    groups, a tensor lr, or a setting such as amsgrad): then torch.optim's own step() runs."""
    if len(optimizer.param_groups) != 1 or isinstance(optimizer.param_groups[0]["lr"], Tensor):
        return None
    rule = rule_of(type(optimizer), optimizer.param_groups[0])
    return None if rule is None else rule.update


def optimizer_update(optimizer: torch.optim.Optimizer) -> Update:
    """The optimizer's update as a plain function: the rule above, or else its own ``step()``
    on gradients handed to its parameters (RMSprop, amsgrad, ...)."""
    rule = update_rule(optimizer)
    if rule is not None:
        return rule
    owned = [p for group in optimizer.param_groups for p in group["params"]]

    def torch_optim_step(params: Params, grads: Sequence[Tensor], state: State, hp: Hyper) -> None:
        for param, grad in zip(owned, grads):
            param.grad = grad
        optimizer.step()

    return torch_optim_step


def clip_gradients(grads: Sequence[Tensor], max_value: Optional[float], algorithm: str = "norm", stacked: bool = False) -> None:
    """In place, as ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` do: scale all
    gradients so their joint L2 norm is at most ``max_value``, or clamp each element.
    ``stacked``: gradients ``[K, ...]`` of K jobs, each job's norm its own."""
    if not max_value:
        return
    with torch.no_grad():
        if algorithm == "value":
            for grad in grads:
                grad.clamp_(-max_value, max_value)
            return
        norms = [torch.linalg.vector_norm(g.flatten(1), dim=1) if stacked else torch.linalg.vector_norm(g) for g in grads]
        total = torch.linalg.vector_norm(torch.stack(norms), dim=0)  # stacked: [K]
        scale = (max_value / (total + 1e-6)).clamp(max=1.0)  # no host sync: the scale stays a tensor
        for grad in grads:
            grad.mul_(along(scale, grad) if stacked else scale)


def along(values: Tensor, like: Tensor) -> Tensor:
    """One value per stacked job, ``[K]``, shaped ``[K, 1, ...]`` to meet ``like`` (``[K, ...]``) job by job."""
    return values.view(-1, *[1] * (like.dim() - 1)) if values.dim() == 1 else values


def train_step(
    params: Params,
    state: State,
    batch: tuple[Tensor, Tensor],
    hp: Hyper,
    *,
    forward: Callable[[Params, Tensor], Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    update: Update,
    clip_val: Optional[float] = None,
    clip_algorithm: str = "norm",
) -> tuple[Tensor, list[Tensor]]:
    """One optimizer step, in place on ``params`` and ``state``; returns (loss, gradients).

    ``forward(params, x)`` is the model as a function of its parameters
    (``torch.func.functional_call``)."""
    x, y = batch

    def loss_at(p: Params) -> Tensor:
        return loss_fn(forward(p, x), y)  # forward, loss

    grads, loss = torch.func.grad_and_value(loss_at)(tuple(params))  # backward
    grads = list(grads)
    clip_gradients(grads, clip_val, clip_algorithm)
    update(params, grads, state, hp)  # step
    return loss, grads
