"""The training batches of K stacked jobs, served to Lightning's fit loop: each job in its own
seeded order (``data.batches.SeededOrder``, as its solo run), a grid step's batches as one
tensor ``[K, B, ...]``, and a Lightning call's ``steps`` grid steps as one list."""

import math
from collections.abc import Callable, Iterator
from typing import Optional

import torch

from microtrain.data.batches import Batch, TensorBatches, on_device


class StackedBatches:
    """The group's training split on its device, and one epoch of batches per ``iter``. The epoch
    is the group's own count (``epoch_of()``), not Lightning's, which starts at 0 in every fit, a
    resumed group's included; a group resumed mid-epoch starts its first epoch at the batch after
    its checkpoint (``resume_at``)."""

    # Lightning looks for these, as on a DataLoader, to call set_epoch: the group sets its own
    sampler = None
    batch_sampler = None

    def __init__(self, train: Batch, seeds: list[int], batch_size: Optional[int], device: torch.device, dtype: torch.dtype):
        self.x, self.y = on_device(train, device, dtype)
        solo = [TensorBatches(*train, batch_size, True, seed) for seed in seeds]  # each job's order and batch size, as its solo run's
        self.samplers = [b.sampler for b in solo]
        self.batch_size, self.batches_per_epoch = solo[0].batch_size, solo[0].batches_per_epoch
        self.steps = 1  # grid steps a Lightning call
        self.epoch_of: Callable[[], int] = lambda: 0
        self.resume_at = (0, 0)  # (epoch, batches of it done)

    def serve(self, steps: int, epoch_of: Callable[[], int], resume_at: tuple[int, int]) -> "StackedBatches":
        self.steps, self.epoch_of, self.resume_at = steps, epoch_of, resume_at
        return self

    def planned_steps(self, max_epochs: Optional[int], max_steps: int, accumulate: int = 1) -> int:
        """The steps trainer.max_epochs and trainer.max_steps allow (10**9 for neither), of
        ``accumulate`` batches each (an epoch's last step takes what is left)."""
        per_epoch = math.ceil(self.batches_per_epoch / accumulate)
        by_epochs = max_epochs * per_epoch if max_epochs is not None and max_epochs >= 0 else math.inf
        planned = min(by_epochs, max_steps if max_steps > 0 else math.inf)
        return int(planned) if planned != math.inf else 10**9

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch / self.steps)

    def __iter__(self) -> Iterator[list[Batch]]:
        epoch = self.epoch_of()
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
        orders = torch.stack([s.order() for s in self.samplers]).to(self.x.device)  # [K, rows]
        first = self.resume_at[1] if epoch == self.resume_at[0] else 0
        size = self.batch_size
        for start in range(first, self.batches_per_epoch, self.steps):
            stop = min(start + self.steps, self.batches_per_epoch)
            yield [(self.x[index], self.y[index]) for index in (orders[:, b * size : (b + 1) * size] for b in range(start, stop))]
