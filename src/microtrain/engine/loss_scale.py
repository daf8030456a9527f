"""``device.precision=16-mixed`` for K stacked jobs: each job's own loss scale, kept as each
solo run's ``torch.amp.GradScaler`` (Lightning's ``MixedPrecision``) keeps it. The backward
takes the loss times the scale (float16 gradients would underflow unscaled), the gradients are
multiplied by its reciprocal, and a job whose gradients then hold an Inf or a NaN skips its
update; its scale halves then, and doubles after ``INTERVAL`` steps without one. The scaler's
own arithmetic (``_amp_foreach_non_finite_check_and_unscale_``, ``_amp_update_scale_``) written
on tensors with a leading job dimension, so a stacked job's scale and skipped steps follow its
solo twin's (``tests/test_stacked.py``)."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor

from microtrain.engine.step import along

# GradScaler's defaults, which Lightning's MixedPrecision takes
INIT, GROWTH, BACKOFF, INTERVAL = 2.0**16, 2.0, 0.5, 2000
PRECISION_KEY = "MixedPrecision"  # where Lightning's checkpoint holds the scaler's state


def unscaled(scaled_grads: list[Tensor], scale: Tensor) -> tuple[list[Tensor], Tensor]:
    """(K jobs' gradients of their losses times their scales ``[K]``, unscaled as
    ``GradScaler.unscale_`` computes it; whether each job's held an Inf or a NaN, ``[K]``:
    checked on the scaled ones, as the scaler's kernel checks)."""
    found = ~torch.stack([torch.isfinite(g).flatten(1).all(dim=1) for g in scaled_grads]).all(dim=0)
    inverse = scale.double().reciprocal().float()
    return [g * along(inverse, g) for g in scaled_grads], found


@contextmanager
def skip_overflowed(found: Tensor, params: list[Tensor], state: list[dict[str, Tensor]]) -> Iterator[None]:
    """Around the K jobs' update: a job whose gradients overflowed (``found``) keeps its weights
    and optimizer state, as ``GradScaler.step`` skips the update."""
    before = [p.clone() for p in params], [{key: value.clone() for key, value in slot.items()} for slot in state]
    yield
    for param, old in zip(params, before[0]):
        param.copy_(torch.where(along(found, param), old, param))
    for slot, old_slot in zip(state, before[1]):
        for key, value in slot.items():
            # a slot the skipped update created: as torch.optim creates it at the next one (zeros, step 0;
            # SGD's momentum buffer so only without dampening: stack.groups)
            slot[key] = torch.where(along(found, value), old_slot.get(key, torch.zeros_like(value)), value)


def updated_scale(scale: Tensor, tracker: Tensor, found: Tensor) -> tuple[Tensor, Tensor]:
    """``torch._amp_update_scale_`` for each job: halved after a skipped step, doubled after
    ``INTERVAL`` steps in a row without one (unless that overflows)."""
    successful = torch.where(found, torch.zeros_like(tracker), tracker + 1)
    grown = scale * GROWTH
    grow = (successful == INTERVAL) & torch.isfinite(grown)
    scale = torch.where(found, scale * BACKOFF, torch.where(grow, grown, scale))
    return scale, torch.where(successful == INTERVAL, torch.zeros_like(successful), successful)


def scaler_state(scale: float, tracker: int) -> dict[str, Any]:
    """What ``GradScaler.state_dict()`` holds, for a job's checkpoint."""
    return {"scale": scale, "growth_factor": GROWTH, "backoff_factor": BACKOFF, "growth_interval": INTERVAL, "_growth_tracker": tracker}


def initial(saved: Sequence[Optional[dict[str, Any]]], device: torch.device) -> tuple[Tensor, Tensor]:
    """The K jobs' (scale, growth tracker): from their checkpoints' scaler states, or fresh."""
    scales = [float(s["scale"]) if s else INIT for s in saved]
    trackers = [int(s["_growth_tracker"]) if s else 0 for s in saved]
    return torch.tensor(scales, dtype=torch.float32, device=device), torch.tensor(trackers, dtype=torch.int32, device=device)
