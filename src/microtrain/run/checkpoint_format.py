"""Lightning's checkpoint format, for models trained outside Lightning's loop (``stack``: the
jobs of a stacked sweep), so ``resume=true``, ``predict.py`` and ``trainer.test`` read their
checkpoints as their own."""

import math
from typing import Any, Optional

import lightning as L
import torch


def _progress(count: int, *fields: str) -> dict[str, int]:
    return {field: count for field in fields}


def epoch_end_checkpoint(
    state_dict: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_states: list[dict[str, Any]],
    epochs_done: int,
    global_step: int,
    steps_per_call: int,
    batches_per_epoch: int,
    val_batches: int,
    callbacks: list["L.Callback"],
    batches_done: Optional[int] = None,
    mid_epoch: bool = False,
    precision: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The checkpoint Lightning writes at the end of a training epoch (``LastCheckpoint``), for a
    model trained outside it (``stack``: one of a sweep's stacked jobs): the same keys and loop
    counters, so ``resume=true``, ``predict.py`` and ``trainer.test`` take it as their own.
    ``tests/test_stacked.py`` compares it key by key with one Lightning wrote. ``steps_per_call``:
    the batches a Lightning call serves (``loop.steps_per_call``, at most an epoch's).
    ``batches_done``: of the last epoch, when ``trainer.max_steps`` ended it early.

    ``mid_epoch``: the checkpoint ``checkpoint.every_n_steps`` writes after ``batches_done``
    batches of an epoch that goes on (``epochs_done`` epochs before it), as Lightning writes it in
    that call's ``on_train_batch_end``: the call processed but not yet completed, the epoch started
    but not processed, the validation counters those of the last epoch's (none in the first).
    ``precision``: 16-mixed's scaler state (``engine.loss_scale.scaler_state``)."""
    calls_per_epoch = math.ceil(batches_per_epoch / steps_per_call)
    if mid_epoch:
        epoch, position = epochs_done, batches_done or 0
        calls_now = math.ceil(position / steps_per_call)
        calls = epochs_done * calls_per_epoch + calls_now
        stepped, last_batch, validated = calls - 1, False, val_batches if epochs_done else 0
        epochs = {"ready": epochs_done + 1, "completed": epochs_done, "started": epochs_done + 1, "processed": epochs_done}
    else:
        epoch = epochs_done - 1
        calls_now = math.ceil((batches_per_epoch if batches_done is None else batches_done) / steps_per_call)
        # A Lightning call serves steps_per_call batches whether or not max_steps stops it early, and
        # the loader counts them all as served, as a solo run's checkpoint does.
        position = min(batches_per_epoch, calls_now * steps_per_call)
        calls = epoch * calls_per_epoch + calls_now
        stepped, last_batch, validated = calls, position == batches_per_epoch, val_batches
        epochs = {"ready": epochs_done, "completed": epochs_done - 1, "started": epochs_done, "processed": epochs_done}
    done = -1 if mid_epoch else 0  # the call in whose hook a mid-epoch checkpoint is written is not completed yet
    batch = {"total": _calls(calls, done), "current": _calls(calls_now, done), "is_last_batch": last_batch}
    four = ("ready", "completed", "started", "processed")
    val = {"total": _progress(validated, *four), "current": _progress(validated, *four), "is_last_batch": validated > 0}
    fit_loop = {
        "state_dict": {"combined_loader": [{"epoch": epoch, "position": position}]},
        "epoch_loop.state_dict": {"_batches_that_stepped": stepped},
        "epoch_loop.batch_progress": batch,
        "epoch_loop.scheduler_progress": _idle("ready", "completed"),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {"step": _idle("ready", "completed"), "zero_grad": _idle("ready", "completed", "started")}
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": {
            "total": _progress(global_step, "ready", "completed"),
            "current": _progress(global_step, "ready", "completed"),
        },
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": val,
        "epoch_progress": {"total": dict(epochs), "current": dict(epochs)},
    }
    quiet = {"state_dict": {}, "batch_progress": {**_idle(*four), "is_last_batch": False}}
    scaler = {"MixedPrecision": precision} if precision else {}  # 16-mixed: the GradScaler's state, under Lightning's key
    return scaler | {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": state_dict,
        "loops": {
            "fit_loop": fit_loop,
            "validate_loop": quiet,
            "test_loop": dict(quiet),
            "predict_loop": {"state_dict": {}, "batch_progress": _idle(*four)},
        },
        "callbacks": {cb.state_key: cb.state_dict() for cb in callbacks},
        "optimizer_states": [optimizer_state],
        "lr_schedulers": scheduler_states,
    }


def _calls(count: int, completed_offset: int) -> dict[str, int]:
    return {"ready": count, "completed": count + completed_offset, "started": count, "processed": count}


def _idle(*fields: str) -> dict[str, dict[str, int]]:
    return {"total": _progress(0, *fields), "current": _progress(0, *fields)}
