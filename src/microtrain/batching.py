"""Serve in-memory tensors to Lightning by indexing, with a batch order that a checkpoint can restore.

A DataLoader over a TensorDataset collates sample by sample (3-6 us per sample here); cutting a
batch out of a whole tensor with one index op costs one kernel, on the CPU or on the GPU.
"""

import math
from typing import Any, Iterator, Optional

import lightning as L
import torch

from microtrain.device import data_placement

Batch = tuple[torch.Tensor, torch.Tensor]


class TensorBatches:
    """Batches of (x, y) in a seeded order per epoch; ``state_dict`` records the epoch and position.

    Lightning saves ``state_dict()`` into checkpoints and calls ``load_state_dict`` on resume, so
    a run killed mid-epoch continues with the very next batch. The order of epoch ``e`` is a
    function of (seed, e) alone, so no RNG state needs saving.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: Optional[int],
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: Optional[torch.device] = None,
    ):
        self.x, self.y = x, y
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        # Only set when the tensors live in pinned host memory and each batch must be copied.
        self.copy_to = device
        self.rows_per_rank = len(x) // world_size
        self.batch_size = min(batch_size or self.rows_per_rank, self.rows_per_rank)
        self.epoch, self.position = 0, 0
        self._started = False

    def __len__(self) -> int:
        return math.ceil(self.rows_per_rank / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self._started and (self.position == 0 or self.position >= len(self)):
            self.epoch += 1
        if self.position >= len(self):
            self.position = 0
        self._started = True
        order = self._order(self.epoch)
        while self.position < len(self):
            start = self.position * self.batch_size
            index = order[start : start + self.batch_size]
            self.position += 1
            yield self._cut(index)

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.x)
        # One batch of every row needs no order; skipping the shuffle keeps the notebooks' row order.
        if self.shuffle and len(self) > 1:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        # Every rank gets the same number of rows, or DDP ranks would wait on each other forever.
        order = order[self.rank :: self.world_size][: self.rows_per_rank]
        return order.to(self.x.device)

    def _cut(self, index: torch.Tensor) -> Batch:
        x, y = self.x[index], self.y[index]
        if self.copy_to is not None:
            x = x.pin_memory().to(self.copy_to, non_blocking=True)
            y = y.pin_memory().to(self.copy_to, non_blocking=True)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "started": self._started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self._started = state["epoch"], state["position"], state["started"]


class TensorDataModule(L.LightningDataModule):
    """Train and validation tensors, moved once to the training device when they fit there."""

    def __init__(self, train: Batch, val: Optional[Batch], batch_size: Optional[int], seed: int):
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.seed = batch_size, seed
        self.copy_to: Optional[torch.device] = None

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        n_bytes = sum(t.numel() * t.element_size() for pair in (self.train, self.val) if pair for t in pair)
        if data_placement(n_bytes, device) == "device":
            self.train = _to(self.train, device)
            self.val = _to(self.val, device)
        else:
            self.copy_to = device

    def train_dataloader(self) -> TensorBatches:
        rank, world = self._rank_and_world()
        return TensorBatches(*self.train, self.batch_size, True, self.seed, rank, world, self.copy_to)

    def val_dataloader(self) -> list:
        if self.val is None:
            return []
        rank, world = self._rank_and_world()
        # Evaluation has no optimizer step to wait for, so it takes the whole split in one batch
        # unless a batch size was asked for.
        return [TensorBatches(*self.val, self.batch_size and max(self.batch_size, 4096), False, 0, rank, world, self.copy_to)]

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size


def _to(pair: Optional[Batch], device: torch.device) -> Optional[Batch]:
    return None if pair is None else (pair[0].to(device), pair[1].to(device))
