"""Serve in-memory tensors to Lightning by indexing, with a batch order that a checkpoint can restore.

A DataLoader over a TensorDataset collates sample by sample (3-6 us per sample here); cutting a
batch out of a whole tensor with one index op costs one kernel, on the CPU or on the GPU.
"""

import math
from typing import Any, Iterator, Optional, Union, cast

import lightning as L
import torch

from microtrain.device import data_placement

Batch = tuple[torch.Tensor, torch.Tensor]


def on_device(pair: Batch, device: Union[torch.device, str], dtype: torch.dtype) -> Batch:
    """(x, y) on ``device``, x and float targets in ``dtype`` (float64 under precision 64), class
    labels as they are: for evaluations and stacks, outside Lightning's loop, which does this itself."""
    x, y = pair
    y = y.to(device, dtype) if y.is_floating_point() else y.to(device)
    return x.to(device, dtype), y


class SeededOrder:
    """The row order of each epoch, a function of (seed, epoch) alone, so no RNG state needs saving.

    Lightning calls ``set_epoch`` on a loader's ``sampler`` at the start of every epoch (as it
    does for DistributedSampler), including the first epoch after a resume.
    """

    def __init__(self, n_rows: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n_rows, self.shuffle, self.seed = n_rows, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.rows_per_rank = n_rows // world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n_rows, generator=generator)
        else:
            order = torch.arange(self.n_rows)
        # Every rank gets the same number of rows, or DDP ranks would wait on each other forever.
        return order[self.rank :: self.world_size][: self.rows_per_rank]


class TensorBatches:
    """Batches of (x, y) cut from whole tensors, in the order of ``sampler``.

    ``state_dict`` records the epoch and how many batches of it were served; Lightning saves it
    into checkpoints and calls ``load_state_dict`` when it resumes mid-epoch, so a run killed
    mid-epoch continues with the very next batch.
    """

    batch_sampler = None  # DataLoader's interface, which Lightning inspects: batches come from `sampler` order

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
        steps_per_call: int = 0,
    ):
        self.x, self.y = x, y
        # 0: yield (x, y) batches. K >= 1: yield lists of up to K batches, never across an epoch's
        # end, so one Lightning training_step can take K optimizer steps (see engine.module.Trainee).
        self.steps_per_call = steps_per_call
        # One batch of every row needs no order; not shuffling it keeps the notebooks' row order.
        self.sampler = SeededOrder(len(x), shuffle and bool(batch_size and batch_size < len(x) // world_size), seed, rank, world_size)
        self.batch_size = min(batch_size or self.sampler.rows_per_rank, self.sampler.rows_per_rank)
        # Only set when the tensors live in pinned host memory and each batch must be copied.
        self.copy_to = device
        self.position = 0
        self._resume_at: Optional[tuple[int, int]] = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.sampler.rows_per_rank / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch / max(self.steps_per_call, 1))

    def __iter__(self) -> Iterator[Union[Batch, list[Batch]]]:
        self.position = 0  # batches served this epoch
        if self._resume_at is not None and self._resume_at[0] == self.sampler.epoch:
            self.position = self._resume_at[1]
        self._resume_at = None
        order = self.sampler.order().to(self.x.device)
        while self.position < self.batches_per_epoch:
            take = min(max(self.steps_per_call, 1), self.batches_per_epoch - self.position)
            start = self.position * self.batch_size
            x, y = self._gather(order[start : start + take * self.batch_size])
            # One gather for the K batches of a call; each batch is then a view of it: the same
            # rows as indexing batch by batch, one index op instead of K (~10 us each here).
            batches = list(zip(x.split(self.batch_size), y.split(self.batch_size)))
            self.position += take
            yield batches if self.steps_per_call else batches[0]

    def _gather(self, index: torch.Tensor) -> Batch:
        x, y = self.x[index], self.y[index]
        if self.copy_to is not None:
            x = x.pin_memory().to(self.copy_to, non_blocking=True)
            y = y.pin_memory().to(self.copy_to, non_blocking=True)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.sampler.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._resume_at = (state["epoch"], state["position"])


class TensorDataModule(L.LightningDataModule):
    """Train and validation tensors, moved once to the training device when they fit there."""

    def __init__(
        self,
        train: Batch,
        val: Optional[Batch],
        batch_size: Optional[int],
        seed: int,
        test: Optional[Batch] = None,
        steps_per_call: int = 1,
    ):
        super().__init__()
        self.train, self.val, self.test = train, val, test
        self.steps_per_call = steps_per_call
        self.batch_size, self.seed = batch_size, seed
        self.copy_to: Optional[torch.device] = None

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        splits = (self.train, self.val, self.test)
        n_bytes = sum(t.numel() * t.element_size() for pair in splits if pair for t in pair)
        if data_placement(n_bytes, device) == "device":
            train, self.val, self.test = (_to(pair, device) for pair in splits)
            self.train = cast(Batch, train)  # a pair stays a pair
        else:
            self.copy_to = device

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches cut from tensors already on the device need no move; Lightning's generic walk
        over a list of K batches costs ~15 us a step."""
        first = batch[0][0] if isinstance(batch, list) else batch[0]
        if first.device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> TensorBatches:
        rank, world = self._rank_and_world()
        return TensorBatches(*self.train, self.batch_size, True, self.seed, rank, world, self.copy_to, self.steps_per_call)

    def val_dataloader(self) -> list:
        return self._evaluation_batches(self.val)

    def test_dataloader(self) -> list:
        return self._evaluation_batches(self.test)

    def _evaluation_batches(self, pair: Optional[Batch]) -> list:
        if pair is None:
            return []
        rank, world = self._rank_and_world()
        # Evaluation has no optimizer step to wait for: batches of at least 4096 rows.
        return [TensorBatches(*pair, self.batch_size and max(self.batch_size, 4096), False, 0, rank, world, self.copy_to)]

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size


def _to(pair: Optional[Batch], device: torch.device) -> Optional[Batch]:
    return None if pair is None else (pair[0].to(device), pair[1].to(device))
