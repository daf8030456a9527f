"""torch.optim's arithmetic, for one model or K stacked ones: the operations the update rules of
``engine.step`` are written in.

With Python-float hyper-parameters they are torch.optim's own operations, so the rules are
bitwise torch.optim. With a tensor of one value per stacked job (float64, as Python's floats
are, shaped ``[K, 1, ...]``) each job's row is still torch.optim's to the bit on the CPU:
the value is cast to the weights' dtype, as torch casts a Python scalar; ``addcmul`` rounds
``a + s·b`` once, as ``add(b, alpha=s)`` does (the CPU's fused multiply-add), where ``a - s*b``
would round twice; and powers are Python's. Measured: with ``a - s*b`` four stacked RMSprop jobs
of the 3->64->1 MLP ended up to 0.01 away from their solo runs after 1,100 steps; with these, 0
(``tests/test_step.py`` checks every rule, float32 and float64, 25 steps). Under
``torch.compile`` they are written out: torch 2.13 compiles ``add(alpha=...)`` on ``torch.func``
gradients wrongly (measured: weight decay off by 0.08 after three steps; tests/test_compiled.py).
"""

from typing import Any

import torch
from torch import Tensor


def on(value: Any) -> bool:
    """Whether a term applies: a tensor (one value per stacked job, some maybe 0) always does."""
    return isinstance(value, Tensor) or value != 0


def add(tensor: Tensor, other: Tensor, scale: Any, inplace: bool = False) -> Tensor:
    """tensor + scale·other, as torch.optim's ``add(other, alpha=scale)``."""
    scale = like(scale, tensor)
    if torch.compiler.is_compiling():
        return tensor.add_(scale * other) if inplace else tensor + scale * other
    if isinstance(scale, Tensor):
        return tensor.addcmul_(scale, other) if inplace else torch.addcmul(tensor, scale, other)
    return tensor.add_(other, alpha=scale) if inplace else tensor.add(other, alpha=scale)


def addcmul(tensor: Tensor, a: Tensor, b: Tensor, scale: Any) -> Tensor:
    """In place: tensor + scale·a·b, as torch.optim's ``addcmul_(a, b, value=scale)``."""
    scale = like(scale, tensor)
    if torch.compiler.is_compiling():
        return tensor.add_(scale * a * b)
    if isinstance(scale, Tensor):
        return tensor.addcmul_(scale * a, b)
    return tensor.addcmul_(a, b, value=scale)


def addcdiv(tensor: Tensor, a: Tensor, b: Tensor, scale: Any) -> Tensor:
    """In place: tensor + scale·a/b, as torch.optim's ``addcdiv_(a, b, value=scale)``."""
    scale = like(scale, tensor)
    if torch.compiler.is_compiling():
        return tensor.add_(scale * (a / b))
    if isinstance(scale, Tensor):  # addcdiv_'s own order: (scale·a)/b, then the sum
        return tensor.add_(scale * a / b)
    return tensor.addcdiv_(a, b, value=scale)


def like(value: Any, param: Tensor) -> Any:
    """A hyper-parameter, or a value made of them, in the parameter's dtype, as a Python float enters
    an operation (one per stacked job is float64, as Python's floats are)."""
    return value.to(param.dtype) if isinstance(value, Tensor) else value


def count(step: Tensor, lr: Any) -> Any:
    """The step count as torch.optim reads it (a Python float), or as a float64 tensor in a
    compiled or stacked step (``lr`` a tensor there): no host sync."""
    return step.double() if isinstance(lr, Tensor) else step.item()


def power(base: Any, exponent: Any) -> Any:
    """base ** exponent as Python computes torch.optim's: torch's vectorized pow differs from the C
    library's in the last bit now and then (0.9 ** t: 2 of t = 1..199), so on the CPU each
    stacked job's is a Python float (64 jobs: 3 us; 17 when their bases differ); compiled or on a
    GPU, torch's (no host sync)."""
    held = base if isinstance(base, Tensor) else exponent
    if not isinstance(held, Tensor) or held.device.type != "cpu" or torch.compiler.is_compiling():
        return base**exponent
    values = [set(v.flatten().tolist()) if isinstance(v, Tensor) else {v} for v in (base, exponent)]
    if all(len(v) == 1 for v in values):  # the jobs' usual case (one step count, shared betas): one float for all
        return values[0].pop() ** values[1].pop()
    bases, powers = torch.broadcast_tensors(torch.as_tensor(base, dtype=torch.float64), torch.as_tensor(exponent, dtype=torch.float64))
    return torch.tensor([b**e for b, e in zip(bases.flatten().tolist(), powers.flatten().tolist())], dtype=torch.float64).view(bases.shape)
