"""Which device and precision a run uses, and where its data lives.

Everything here asks ``torch.cuda`` at call time, so tests can monkeypatch it to walk the
CUDA branches on a CPU-only machine.
"""

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from microtrain.errors import DeviceError

PRECISIONS = ("32", "32-true", "64", "64-true", "16-mixed", "bf16-mixed")
# Data sets up to this size are moved to the GPU whole, so batches are cut there with no copy.
ON_DEVICE_LIMIT_FRACTION = 0.25


@dataclass(frozen=True)
class DevicePlan:
    accelerator: str  # "cpu" | "cuda", handed to lightning.Trainer
    precision: str  # handed to lightning.Trainer
    description: str  # what the run prints at start, e.g. "cuda:0 (NVIDIA H100, 79.1 GiB)"


def resolve(cfg: Mapping[str, Any]) -> DevicePlan:
    wanted, precision = cfg["type"], str(cfg["precision"])
    has_cuda = torch.cuda.is_available()
    if wanted == "cuda" and not has_cuda:
        raise DeviceError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    accelerator = "cuda" if wanted == "cuda" or (wanted == "auto" and has_cuda) else "cpu"
    if accelerator == "cpu" and precision == "16-mixed":
        raise DeviceError("device.precision=16-mixed needs a CUDA GPU; on CPU use bf16-mixed or 32")
    if accelerator == "cuda" and precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU has no bfloat16 support; use device.precision=16-mixed")
    return DevicePlan(accelerator, precision, describe(accelerator, cfg["threads"]))


# Measured here (eager SGD step, 1 against 2 threads): 3->64->1 batch 32 (0.01 M multiply-adds)
# 0.91x, 16->128->4 batch 128 (0.34 M) 0.84x, 32->256->8 batch 256 (2.7 M) 0.88x, 64->512->64
# batch 256 (17 M) 1.34x, 256->1024->256 batch 1024 (538 M) 1.37x.
ONE_THREAD_BELOW = 10_000_000  # multiply-adds a step


def spawned(trainer: Mapping[str, Any]) -> Optional[str]:
    """The strategy that starts several processes without re-running the command, where Lightning
    would re-run it (``strategy=ddp``, or ``auto`` with several devices or nodes): ``ddp_spawn``,
    or ``ddp_notebook`` in an interactive session (Lightning's own choice there, as it refuses
    ``ddp_spawn``); None where Lightning starts no process by re-running the command."""
    devices, strategy = trainer.get("devices", 1), trainer.get("strategy", "auto")
    one = devices in (1, "1", "auto") or isinstance(devices, Sequence) and not isinstance(devices, str) and len(devices) == 1
    if strategy == "ddp" or strategy == "auto" and (not one or trainer.get("num_nodes", 1) != 1):
        return "ddp_notebook" if hasattr(sys, "ps1") or sys.flags.interactive else "ddp_spawn"  # as Lightning tells a notebook
    return None


def use_threads(setting: Any, multiply_adds: int) -> int:
    """``device.threads``: a number, or auto = 1 thread for a model too small to gain from more
    (and which slows 20-60x when another process holds the second core), else torch's default."""
    threads = setting if setting != "auto" else 1 if multiply_adds < ONE_THREAD_BELOW else DEFAULT_THREADS
    torch.set_num_threads(threads)
    return threads


DEFAULT_THREADS = torch.get_num_threads()


def describe(accelerator: str, threads: Any = "auto") -> str:
    if accelerator == "cpu":
        return "cpu (threads: auto, by model size)" if threads == "auto" else f"cpu ({threads} threads)"
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"


def available_bytes(accelerator: str) -> int:
    """Free memory where training runs: the GPU's, or the host's available pages."""
    if accelerator == "cuda":
        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def data_placement(n_bytes: int, device: torch.device) -> str:
    """'device' to keep a data set on the training device, 'pinned' to stream it from pinned host memory.

    On CPU data always stays put. On a GPU a data set that takes at most a quarter of the free
    memory is copied once; a larger one stays in page-locked host memory so each batch can be
    copied with ``non_blocking=True`` while the GPU works on the previous one.
    """
    if device.type != "cuda":
        return "device"
    free, _total = torch.cuda.mem_get_info(device)
    return "device" if n_bytes <= ON_DEVICE_LIMIT_FRACTION * free else "pinned"
