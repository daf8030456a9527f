"""``device.precision=16-mixed`` for K stacked jobs: each job's own loss scale, kept as each
solo run's ``torch.amp.GradScaler`` (Lightning's ``MixedPrecision``) keeps it. The backward
takes the loss times the scale (float16 gradients would underflow unscaled), the gradients are
multiplied by its reciprocal, and a job whose gradients then hold an Inf or a NaN skips its
update; its scale halves then, and doubles after ``INTERVAL`` steps without one. The scaler's
own arithmetic (``_amp_foreach_non_finite_check_and_unscale_``, ``_amp_update_scale_``) written
on tensors with a leading job dimension, so a stacked job's scale and skipped steps follow its
solo twin's (``tests/test_stacked.py``)."""

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

# GradScaler's defaults, which Lightning's MixedPrecision takes
INIT, GROWTH, BACKOFF, INTERVAL = 2.0**16, 2.0, 0.5, 2000
PRECISION_KEY = "MixedPrecision"  # where Lightning's checkpoint holds the scaler's state


def scaled_train_step(
    params: list[Tensor],
    state: list[dict[str, Tensor]],
    batch: tuple[Any, Any],
    hp: dict[str, Any],
    *,
    forward: Callable[..., Any],
    loss_fn: Callable[..., Tensor],
    update: Callable[..., None],
    clip: Callable[[list[Tensor]], list[Tensor]],
) -> tuple[Tensor, list[Tensor], Tensor]:
    """One job's step under its loss scale ``hp["loss_scale"]``: (the unscaled loss, the unscaled
    gradients before clipping, as a solo run's inspection sees them; whether they held an Inf or
    NaN, in which case params and state are as before). ``clip``: the clipped copy of gradients."""
    x, y = batch
    scale = hp["loss_scale"]

    def scaled(p: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        loss = loss_fn(forward(p, x), y)
        return loss * scale, loss  # GradScaler.scale(loss), as Lightning's backward takes it

    scaled_grads, (_, loss) = torch.func.grad_and_value(scaled, has_aux=True)(tuple(params))
    found = ~torch.stack([torch.isfinite(g).all() for g in scaled_grads]).all()  # of the scaled ones, as the scaler's kernel checks
    inverse = scale.double().reciprocal().float()  # as GradScaler.unscale_ computes it
    grads = [g * inverse for g in scaled_grads]
    before = [p.clone() for p in params], [{key: value.clone() for key, value in slot.items()} for slot in state]
    update(params, clip(grads), state, hp)  # clipped after unscaling, as a solo run clips in on_before_optimizer_step
    for param, old in zip(params, before[0]):
        param.copy_(torch.where(found, old, param))  # GradScaler.step skips the update
    for slot, old_slot in zip(state, before[1]):
        for key, value in slot.items():
            # a slot the skipped update created: as torch.optim creates it at the next one (zeros, step 0;
            # SGD's momentum buffer so only without dampening: stack.groups)
            slot[key] = torch.where(found, old_slot.get(key, torch.zeros_like(value)), value)
    return loss, grads, found


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
