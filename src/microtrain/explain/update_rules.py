"""The first-step update rules of SGD, Adam, AdamW, RMSprop and Adagrad, checked against what the optimizer did.

Each rule is computed from the parameter before the step and its gradient, independently of
``torch.optim``, then compared with the parameter after the step and with the optimizer's state
(momentum buffer, Adam's moment estimates).
"""

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class RuleCheck:
    rule: str  # the rule in words, e.g. "after = before − lr·grad"
    max_abs_diff: float  # worst |expected − actual| over the parameter and any optimizer state
    holds: bool
    state: dict[str, float] = field(default_factory=dict)


def check_first_step(optimizer: torch.optim.Optimizer, param: torch.Tensor, before: torch.Tensor, grad: torch.Tensor) -> Optional[RuleCheck]:
    """None when microtrain knows no rule for this optimizer class."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state.get(param, {})
    kind = type(optimizer).__name__
    found = _rule_for(kind, group, before, -grad if group.get("maximize") else grad)  # maximize: the rule on the negated gradient
    if found is None:
        return None
    rule, expected, expected_state = found
    if group.get("maximize"):
        rule = f"maximize: grad → −grad; {rule}"
    pairs = [(expected, param.detach(), before), *((value, state[key], value) for key, value in expected_state.items())]
    diffs = [(mine - theirs).abs().max().item() for mine, theirs, _ in pairs]
    # each within 1e-5 of the largest value it involves (the weights before, the result: float32
    # rounds a result near 130, at lr=50, by ~8e-6; a weight of 50 moved to ~0 by its old size)
    holds = all(d <= 1e-6 + 1e-5 * max(t.abs().max().item() for t in tensors) for d, tensors in zip(diffs, pairs))
    return RuleCheck(rule, max(diffs), holds)


def _rule_for(kind: str, group: dict, before: torch.Tensor, grad: torch.Tensor) -> Optional[tuple[str, torch.Tensor, dict]]:
    """(the rule in words, the parameter after it, the state it leaves) of torch.optim's ``kind``, or None."""
    if kind == "SGD":
        return _sgd(group, before, grad)
    if kind in ("Adam", "AdamW"):
        return _adam(group, before, grad, decoupled=kind == "AdamW")
    if kind == "RMSprop":
        return _rmsprop(group, before, grad)
    if kind == "Adagrad":
        return _adagrad(group, before, grad)
    return None


def _gradient(decayed: Any) -> str:
    """The rule's g: with (coupled) weight decay, the gradient plus weight_decay·before."""
    return "g = grad + weight_decay·before; " if decayed else "g = grad; "


def _sgd(group: dict, p: torch.Tensor, g: torch.Tensor) -> tuple[str, torch.Tensor, dict]:
    lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
    rule, d = "after = before − lr·grad", g
    if wd:
        d = d + wd * p
        rule = "d = grad + weight_decay·before; after = before − lr·d"
    state = {}
    if momentum:
        state["momentum_buffer"] = d  # the first step starts the buffer at d, without dampening
        d = d + momentum * d if group["nesterov"] else d
        d_is = "grad + weight_decay·before" if wd else "grad"
        rule = f"d = {d_is}; buf = d (first step); " + ("after = before − lr·(d + momentum·buf)" if group["nesterov"] else "after = before − lr·buf")
    return rule, p - lr * d, state


def _adam(group: dict, p: torch.Tensor, g: torch.Tensor, decoupled: bool) -> tuple[str, torch.Tensor, dict]:
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if decoupled:
        p_decayed = p * (1 - lr * wd)
    else:
        g = g + wd * p
        p_decayed = p
    m, v = (1 - beta1) * g, (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1), v / (1 - beta2)
    after = p_decayed - lr * m_hat / (v_hat.sqrt() + eps)
    decay = "before·(1 − lr·weight_decay)" if decoupled else "before"
    g_is = _gradient(wd and not decoupled)
    rule = f"{g_is}m = (1−β1)·g, v = (1−β2)·g², m̂ = m/(1−β1), v̂ = v/(1−β2); after = {decay} − lr·m̂/(√v̂ + eps)"
    return rule, after, {"exp_avg": m, "exp_avg_sq": v}


def _rmsprop(group: dict, p: torch.Tensor, g: torch.Tensor) -> tuple[str, torch.Tensor, dict]:
    lr, alpha, eps, wd, momentum = group["lr"], group["alpha"], group["eps"], group["weight_decay"], group["momentum"]
    g = g + wd * p
    v = (1 - alpha) * g * g
    if group["centered"]:
        mean = (1 - alpha) * g
        avg = (v - mean * mean).sqrt() + eps
        state = {"square_avg": v, "grad_avg": mean}
    else:
        avg, state = v.sqrt() + eps, {"square_avg": v}
    step = g / avg  # with momentum the buffer starts at 0, so the first step is the same
    if momentum:
        state["momentum_buffer"] = step
    centered = "√(v − ḡ², ḡ = (1−α)·g)" if group["centered"] else "√v"
    g_is = _gradient(wd)
    buffered = f"; with momentum buf = g/({centered} + eps) (first step), after = before − lr·buf" if momentum else ""
    return f"{g_is}v = (1−α)·g² (first step); after = before − lr·g/({centered} + eps){buffered}", p - lr * step, state


def _adagrad(group: dict, p: torch.Tensor, g: torch.Tensor) -> tuple[str, torch.Tensor, dict]:
    lr, eps, wd, start = group["lr"], group["eps"], group["weight_decay"], group["initial_accumulator_value"]
    g = g + wd * p
    total = start + g * g
    g_is = _gradient(wd)
    return f"{g_is}s = initial + g² (first step); after = before − lr·g/(√s + eps)", p - lr * g / (total.sqrt() + eps), {"sum": total}
