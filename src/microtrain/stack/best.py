"""The weights and optimizer state of each stacked job's best epoch (by validation loss), for its best.ckpt."""

from typing import Any, Optional

import torch
from torch import Tensor


class BestEpochs:
    """Kept stacked on the device: one select per tensor for all jobs at each validation,
    instead of a copy per job and epoch; a job's own slice is copied out only when its
    best.ckpt is written."""

    def __init__(self, step: Any):
        self.step = step  # stack.step.StackedStep: its params and state are the tensors kept
        self.tensors: Optional[list[Tensor]] = None

    def keep(self, improved: list[int]) -> None:
        """Take the current weights and state of the jobs whose validation loss improved."""
        if not improved:
            return
        tensors = [*self.step.params, *(t for slot in self.step.state for t in slot.values())]
        mask = torch.zeros(len(tensors[0]), dtype=torch.bool)
        mask[improved] = True
        mask = mask.to(tensors[0].device)
        if self.tensors is None or len(self.tensors) != len(tensors):
            self.tensors = [t.clone() for t in tensors]
            return
        self.tensors = [torch.where(mask.view(-1, *[1] * (t.dim() - 1)), t, b) for t, b in zip(tensors, self.tensors)]

    def of(self, k: int) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Job k's weights and optimizer state at its best epoch, on the CPU."""
        assert self.tensors is not None  # keep() took the improved job's epoch whose best.ckpt this is
        return self.step.job_state(k, self.tensors)
