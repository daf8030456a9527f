"""Stacked sweeps (``hydra/launcher=stacked``): K jobs trained as one stacked model, each ending
as its solo run would, checked against real solo runs, Lightning's own checkpoints and
TensorBoard's reader."""

import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from microtrain.errors import ConfigError
from microtrain.stack.groups import group_jobs, why_alone
from microtrain.stack.train import train_group
from microtrain.engine.fit import train
from microtrain.run.checksums import CHECKSUM, check_checkpoint
from tests_helpers import checkpoint_weights, files_of, ROOT, make_cfg, read_events, run_in_process

MLP = ["model=mlp", "model.hidden=16", "trainer.max_epochs=3"]
# a group whose jobs early stopping ends at different epochs (every epoch's last.ckpt written)
EARLY = [*MLP, "trainer.max_epochs=30", "callbacks=early_stopping", "callbacks.early_stopping.patience=2", "checkpoint.budget=0"]


class Killed(BaseException):
    """A crash as a kill is one: no handler of microtrain's or Lightning's catches it (Lightning
    turns a KeyboardInterrupt into a graceful exit)."""


def crash_group(monkeypatch, hook: str, when, jobs: list[list[str]], tmp_path: Path) -> list[Path]:
    """Train ``jobs`` stacked and kill the group right after StackedRun.<hook> once ``when(run)``;
    the jobs' folders (crashed0, crashed1, ...)."""
    from microtrain.stack import train as stack_train

    original = getattr(stack_train.StackedRun, hook)

    def then_killed(run, *args):
        original(run, *args)
        if when(run):
            raise Killed

    monkeypatch.setattr(stack_train.StackedRun, hook, then_killed)
    crashed = [tmp_path / f"crashed{i}" for i in range(len(jobs))]
    with pytest.raises(Killed):
        train_group([make_cfg(*job) for job in jobs], crashed, [False] * len(jobs))
    monkeypatch.undo()
    return crashed


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def stacked_and_solo(tmp_path: Path, jobs: list[list[str]], solo: list[int]) -> tuple[list[dict], list[Path]]:
    """Train ``jobs`` stacked and the ``solo`` ones alone; the stacked folders and solo folders."""
    cfgs = [make_cfg(*job) for job in jobs]
    folders = [tmp_path / f"stacked{i}" for i in range(len(jobs))]
    metrics = train_group(cfgs, folders, [False] * len(jobs))
    for i in solo:
        train(cfgs[i], tmp_path / f"solo{i}")
    return metrics, folders


def test_a_job_naming_a_metric_the_run_does_not_report_fails_alone(tmp_path):
    """optimize.metric=val_acc on a regression: the job's solo run refuses it once the data is
    known; stacked, that job fails with the same words and its neighbour trains on."""
    jobs = [[*MLP, "trainer.max_epochs=1", "optimize.metric=val_acc"], [*MLP, "trainer.max_epochs=1", "optimize.metric=val_r2", "seed=1"]]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[])
    refusal = "optimize.metric=val_acc is not reported by this run; pick one of: auto, train_loss, val_loss, val_mae, val_mse, val_r2, val_rmse"
    assert metrics[0] == {"status": "failed", "error": refusal} == json.loads((folders[0] / "metrics.json").read_text())
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        train(make_cfg(*jobs[0]), tmp_path / "solo")
    assert metrics[1]["status"] == "ok" and -1 < metrics[1]["val_r2"] <= 1


def one_epoch_stacked(capsys, folder, *args):
    """A stacked sweep of the MLP, one epoch, in process: (exit code, stdout, stderr)."""
    return run_in_process(capsys, "train.py", "-m", "hydra/launcher=stacked", *MLP, "trainer.max_epochs=1", *args, f"hydra.sweep.dir={folder}")


@pytest.mark.parametrize(
    "bad, message",
    [("???", "optimizer.lr is missing; add it to the optimizer config"), ("${oc.env:MICROTRAIN_UNSET}", "MICROTRAIN_UNSET")],
)
def test_a_job_with_a_missing_or_unresolvable_value_fails_alone_in_a_stacked_sweep(tmp_path, capsys, bad, message):
    """optimizer.lr=??? (or an unset environment variable) in one job of a stacked sweep: that job
    fails with its solo run's line, as with the basic launcher, and the others train on."""
    code, out, err = one_epoch_stacked(capsys, tmp_path, f"optimizer.lr=0.01,0.02,{bad}")
    assert code == 1 and "error: 1 of 3 jobs failed" in err, err  # the others trained: exit 1, not 2
    with open(tmp_path / "summary.csv") as handle:
        rows = [row for row in csv.DictReader(handle)]
    statuses = {row["overrides"].split("optimizer.lr=")[1].split()[0][:4]: row["status"] for row in rows}
    assert statuses["0.01"] == statuses["0.02"] == "ok" and sorted(statuses.values()) == ["failed", "ok", "ok"], statuses
    assert any(message in row["error"] for row in rows if row["status"] == "failed")


@pytest.mark.parametrize("bad", [["model.in_features=2"], ["+trainer.max_time=abc"]], ids=["in_features", "max_time"])
@pytest.mark.parametrize("launcher", ["stacked", "basic"])
def test_overwrite_refused_once_a_job_is_built_keeps_the_earlier_jobs_files(tmp_path, capsys, launcher, bad):
    """overwrite=true on a sweep removes a job's earlier run only once the job is built: a job
    refused then (model.in_features, known with the data; a max_time Lightning's Timer refuses)
    keeps every file, as a solo run does, and the summary calls it refused, not the earlier ok run."""

    sweep = ["-m", f"hydra/launcher={launcher}", *MLP, "trainer.max_epochs=1", "optimizer.lr=0.01,0.02", f"hydra.sweep.dir={tmp_path}"]
    sweep.append("hydra.sweep.subdir=${hydra.job.num}")  # the same folders for the second command
    code, _, err = run_in_process(capsys, "train.py", *sweep)
    assert code == 0, err
    before = {job: files_of(tmp_path / job) for job in ("0", "1")}
    summary = [(tmp_path / name).read_bytes() for name in ("summary.csv", "summary.md")]
    code, out, err = run_in_process(capsys, "train.py", *sweep, "overwrite=true", *bad)
    assert code == 2 and ("model.in_features=2 but the data has 3 features" in out + err or "is not a duration" in out + err), out + err
    # every file byte-identical, the sweep's HParams experiment (.sweep, the same jobs) included,
    # and the summary of the runs that are there (it listed both jobs "refused", the runs gone from it)
    assert {job: files_of(tmp_path / job) for job in ("0", "1")} == before
    assert [(tmp_path / name).read_bytes() for name in ("summary.csv", "summary.md")] == summary
    assert err.strip().endswith(
        f"every job of the sweep was refused (their errors above): {tmp_path} keeps its earlier runs and summary as they were"
    )


def test_a_group_that_fails_once_its_jobs_are_open_lists_them_failed(tmp_path, capsys, monkeypatch):
    """An error inside a stacked group's training (a full disk, a bug): each job failed, in its
    metrics.json and the summary (they were left out of the summary when their folders held files)."""
    from microtrain.stack.train import StackedRun

    def broken(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(StackedRun, "_fit", broken)
    code, _, err = run_in_process(capsys, "train.py", "-m", "hydra/launcher=stacked", *MLP, "optimizer.lr=0.01,0.02", f"hydra.sweep.dir={tmp_path}")
    assert code == 2 and "error: 2 of 2 jobs failed or were refused" in err, err
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["failed", "failed"] and all(r["error"] == "RuntimeError: a bug" for r in rows)


def test_a_users_hydra_callback_sees_hydras_own_view_of_a_stacked_job(tmp_path, capsys):
    """A Hydra callback of the user's gets ``job_return.hydra_cfg`` as Hydra's ``run_job`` gives
    it, ``{hydra: ...}`` alone (microtrain's own callbacks read only its ``hydra`` node)."""
    callback = "+hydra.callbacks.keys._target_=tests_helpers.HydraKeysSeen"
    code, _, err = run_in_process(
        capsys, "train.py", "-m", "hydra/launcher=stacked", *MLP, "trainer.max_epochs=1", "seed=0,1", callback, f"hydra.sweep.dir={tmp_path}"
    )
    assert code == 0, err
    seen = [p.read_text() for p in tmp_path.glob("*/hydra_keys.txt")]
    assert seen == ["hydra", "hydra"]


def test_a_stacked_classifier_reports_its_solo_runs_validation_accuracy(tmp_path):
    """Its metrics, and every scalar tag of its solo twin at the same steps: a run shorter than
    log.every_n_steps (the last window's speed) and a test split's scalars included."""
    # inspected every 5 steps: auto's grid widens with the clock, on a loaded host apart from the solo run's
    jobs = [
        ["model=mlp", "data=iris", "loss=cross_entropy", "trainer.max_epochs=3", "log.inspect_every_n_steps=5", f"optimizer.lr={lr}"]
        for lr in (0.05, 0.2)
    ]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0, 1])
    for i in (0, 1):
        solo = json.loads((tmp_path / f"solo{i}" / "metrics.json").read_text())
        assert metrics[i]["val_acc"] == pytest.approx(solo["val_acc"]) and metrics[i]["val_loss"] == pytest.approx(solo["val_loss"], rel=1e-5)
        ours, theirs = read_events(folders[i]), read_events(tmp_path / f"solo{i}")
        assert sorted(ours.Tags()["scalars"]) == sorted(theirs.Tags()["scalars"])
        for tag in theirs.Tags()["scalars"]:
            assert [e.step for e in ours.Scalars(tag)] == [e.step for e in theirs.Scalars(tag)], tag
        for tag in ("test_loss", "test_acc"):
            assert ours.Scalars(tag)[-1].value == pytest.approx(theirs.Scalars(tag)[-1].value, rel=1e-5), tag
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from microtrain.monitor.tags import events_folder

    for run in (folders[0], tmp_path / "solo0"):  # the test split's tags in a group of their own (they stood bare, outside the layout)
        raw = EventAccumulator(str(events_folder(run))).Reload().Tags()["scalars"]
        assert {"2_test/loss", "2_test/acc"} <= set(raw) and "test_acc" not in raw


@pytest.mark.parametrize("every", [7, 3])
def test_loss_window_points_fall_at_the_solo_runs_steps(tmp_path, every):
    """log.every_n_steps that is not a multiple of a call's steps: a point at the end of each call
    that passed a multiple, as a solo run writes it, with the same window's mean."""
    jobs = [[*MLP, "trainer.max_epochs=2", "loop.steps_per_call=4", f"log.every_n_steps={every}", f"optimizer.lr={lr}"] for lr in (0.05, 0.02)]
    _, folders = stacked_and_solo(tmp_path, jobs, solo=[0])
    ours, theirs = read_events(folders[0]).Scalars("train_loss_step"), read_events(tmp_path / "solo0").Scalars("train_loss_step")
    assert [e.step for e in ours] == [e.step for e in theirs] and len(theirs) > 4
    assert [e.value for e in ours] == pytest.approx([e.value for e in theirs], rel=1e-4)


OPTIMIZERS = {
    "rmsprop": [
        ["optimizer=rmsprop", f"optimizer.lr={lr}", f"seed={seed}", f"optimizer.weight_decay={wd}", f"optimizer.alpha={alpha}"]
        for lr, seed, wd, alpha in ((0.001, 0, 0.0, 0.99), (0.003, 1, 0.01, 0.9), (0.0005, 2, 0.0, 0.95))
    ],
    "rmsprop_momentum_centered": [
        ["optimizer=rmsprop", "optimizer.momentum=0.5", "optimizer.centered=true", f"optimizer.lr={lr}", f"seed={seed}"]
        for lr, seed in ((0.001, 0), (0.002, 1), (0.0005, 2))
    ],
    "adagrad": [
        ["optimizer=adagrad", f"optimizer.lr={lr}", f"seed={seed}", f"optimizer.lr_decay={decay}", f"optimizer.initial_accumulator_value={start}"]
        for lr, seed, decay, start in ((0.05, 0, 0.0, 0.0), (0.1, 1, 0.01, 0.1), (0.02, 2, 0.0, 0.0))
    ],
    "sgd_momentum": [
        ["optimizer.momentum=0.9", f"optimizer.lr={lr}", f"seed={seed}", f"optimizer.weight_decay={wd}", f"optimizer.nesterov={nest}"]
        for lr, seed, wd, nest in ((0.01, 0, 0.0, False), (0.03, 1, 0.001, True), (0.003, 2, 0.0, False), (0.02, 0, 0.01, True))
    ],
    "adamw": [
        ["optimizer=adamw", f"optimizer.lr={lr}", f"seed={seed}", f"optimizer.weight_decay={wd}", f"optimizer.betas=[0.9,{b2}]"]
        for lr, seed, wd, b2 in ((0.001, 0, 0.01, 0.999), (0.003, 1, 0.1, 0.99), (0.0005, 2, 0.0, 0.999))
    ],
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_each_stacked_job_ends_within_1e_5_of_its_solo_run(tmp_path, optimizer):
    jobs = [MLP + job for job in OPTIMIZERS[optimizer]]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0, 1])
    assert [m["status"] for m in metrics] == ["ok"] * len(jobs)
    for i in (0, 1):
        assert largest_difference(checkpoint_weights(folders[i]), checkpoint_weights(tmp_path / f"solo{i}")) < 1e-5
        solo = json.loads((tmp_path / f"solo{i}" / "metrics.json").read_text())
        validation = [key for key in solo if key.startswith("val_")]  # what optimize.metric may name
        assert validation == [key for key in metrics[i] if key.startswith("val_")] == ["val_loss", "val_mae", "val_mse", "val_r2", "val_rmse"]
        assert [metrics[i][key] for key in validation] == pytest.approx([solo[key] for key in validation], rel=1e-4, abs=1e-6)
        assert metrics[i]["steps"] == solo["steps"] and metrics[i]["epochs"] == solo["epochs"]
        stacked_opt = torch.load(folders[i] / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
        solo_opt = torch.load(tmp_path / f"solo{i}" / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
        assert stacked_opt["param_groups"] == solo_opt["param_groups"]
        for slot, solo_slot in zip(stacked_opt["state"].values(), solo_opt["state"].values()):
            assert slot.keys() == solo_slot.keys()
            for key in slot:
                assert torch.allclose(slot[key].double(), solo_slot[key].double(), atol=1e-5), key


@pytest.mark.parametrize(
    "extra",
    [
        ["+trainer.gradient_clip_val=0.05"],
        ["+trainer.gradient_clip_val=0.01", "+trainer.gradient_clip_algorithm=value"],
        ["+trainer.accumulate_grad_batches=3"],  # 25 batches an epoch: its last step takes 1
        ["+trainer.accumulate_grad_batches=2", "+trainer.gradient_clip_val=0.05", "optimizer=adam"],
    ],
    ids=["clip_norm", "clip_value", "accumulate", "accumulate_clip_adam"],
)
def test_clipping_and_accumulation_stack_and_match_the_solo_runs(tmp_path, recwarn, extra):
    """Each stacks with its neighbours (stack.groups), clipped and accumulated as its solo run's
    step does: the same steps, weights within 1e-5, the same curve of train_loss."""
    # inspected every 10 steps: auto's grid widens with the clock, on a loaded host apart from the solo run's
    jobs = [[*MLP, *extra, "log.inspect_every_n_steps=10", f"optimizer.lr={lr}", f"seed={seed}"] for lr, seed in ((0.05, 0), (0.02, 1))]
    assert group_jobs([make_cfg(*job) for job in jobs], [0, 0])[1] == {}  # none runs alone
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0, 1])
    for i in (0, 1):
        solo = json.loads((tmp_path / f"solo{i}" / "metrics.json").read_text())
        assert metrics[i]["stacked"]["jobs"] == 2 and metrics[i]["steps"] == solo["steps"] and metrics[i]["epochs"] == solo["epochs"]
        assert largest_difference(checkpoint_weights(folders[i]), checkpoint_weights(tmp_path / f"solo{i}")) < 1e-5
        ours, theirs = read_events(folders[i]).Scalars("train_loss"), read_events(tmp_path / f"solo{i}").Scalars("train_loss")
        assert [e.step for e in ours] == [e.step for e in theirs]
        assert [e.value for e in ours] == pytest.approx([e.value for e in theirs], rel=1e-5)
        # the gradients as they came, before clipping, as a solo run's inspection reads them
        ours, theirs = (read_events(f).Scalars("grad_norm/fc1.weight") for f in (folders[i], tmp_path / f"solo{i}"))
        assert [e.step for e in ours] == [e.step for e in theirs]
        assert [e.value for e in ours] == pytest.approx([e.value for e in theirs], rel=1e-4)


def same_weights(ours: dict, theirs: dict) -> bool:
    """Bitwise where torch's CPU build has MKL, whose batched products give each slice the same
    sums whatever the number of slices (measured); within 1e-6 elsewhere (another BLAS may not)."""
    if torch.backends.mkl.is_available():
        return all(torch.equal(ours[k], theirs[k]) for k in ours)
    return largest_difference(ours, theirs) < 1e-6


@pytest.mark.parametrize("bias", [True, False])
def test_a_jobs_weights_do_not_depend_on_how_many_jobs_stack_with_it(tmp_path, bias):
    """A job trained in a stack of four, of two and alone in a stack of one (a sweep's job resumed
    without its group) ends with the same weights (RMSprop, whose update divides by a running
    mean of squared gradients, carries any difference furthest): each job's update rounds as its
    own (engine.exact), and its products are its own slices of the batched ones, a one-output
    layer's with or without a bias (models.OneOutput; bmm alone summed otherwise at K = 1)."""
    jobs = [
        [*MLP, f"model.bias={bias}", "optimizer=torch", "optimizer.name=RMSprop", f"optimizer.lr={lr}", f"seed={seed}"]
        for lr, seed in ((0.01, 0), (0.003, 1), (0.02, 2), (0.005, 3))
    ]
    cfgs = [make_cfg(*job) for job in jobs]
    for size in (4, 2, 1):
        train_group(cfgs[:size], [tmp_path / f"{size}_{i}" for i in range(size)], [False] * size)
    assert same_weights(checkpoint_weights(tmp_path / "4_0"), checkpoint_weights(tmp_path / "1_0"))
    assert same_weights(checkpoint_weights(tmp_path / "4_1"), checkpoint_weights(tmp_path / "2_1"))


def test_float64_stacked_jobs_match_solo_runs_within_1e_12(tmp_path):
    jobs = [MLP + ["device.precision=64", *job] for job in (OPTIMIZERS["sgd_momentum"][1], OPTIMIZERS["sgd_momentum"][2])]
    _, folders = stacked_and_solo(tmp_path, jobs, solo=[0])
    stacked = checkpoint_weights(folders[0])
    assert stacked["model.fc1.weight"].dtype == torch.float64
    assert largest_difference(stacked, checkpoint_weights(tmp_path / "solo0")) < 1e-12


def test_bf16_mixed_jobs_stack_under_the_trainers_autocast(tmp_path):
    """device.precision=bf16-mixed stacks: the group's Trainer runs each call's steps and its
    validation under Lightning's autocast, as a solo run's. bfloat16 rounds at other places in a
    batched matrix product than in a plain one, so a job agrees with its solo twin to bfloat16's
    precision (7e-4 measured after 75 steps), not to float32's."""
    jobs = [MLP + ["device.precision=bf16-mixed", f"optimizer.lr={lr}", f"seed={seed}"] for lr, seed in ((0.01, 0), (0.03, 1))]
    assert [g.jobs for g in group_jobs([make_cfg(*job) for job in jobs], [0, 0])[0]] == [[0, 1]]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0])
    assert [m["status"] for m in metrics] == ["ok", "ok"]
    full = [[o for o in job if not o.startswith("device.precision")] for job in jobs]
    train_group([make_cfg(*job) for job in full], [tmp_path / "fp32_0", tmp_path / "fp32_1"], [False, False])
    mixed = checkpoint_weights(folders[0])
    assert all(w.dtype == torch.float32 for w in mixed.values())  # the weights stay float32
    assert largest_difference(mixed, checkpoint_weights(tmp_path / "solo0")) < 1e-2
    assert largest_difference(mixed, checkpoint_weights(tmp_path / "fp32_0")) > 1e-5  # autocast was on


def _structure(node):
    """A checkpoint with tensors replaced by their shapes and dtypes, and paths by file names."""
    if isinstance(node, dict):
        return {(Path(k).name if isinstance(k, str) and "/" in k else k): _structure(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_structure(v) for v in node]
    if isinstance(node, torch.Tensor):
        return ("tensor", tuple(node.shape), node.dtype)
    if isinstance(node, str) and "/" in node:
        return Path(node).name
    return node


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["data.val_fraction=0", "scheduler=step", "scheduler.step_size=1"],
        ["scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"],  # best.ckpt holds the epoch's scheduler stepped, as Lightning's
        ["trainer.max_steps=60"],
        ["+trainer.accumulate_grad_batches=3"],
    ],
    ids=["default", "no_validation_with_scheduler", "scheduler", "max_steps_mid_epoch", "accumulate"],
)
def test_checkpoints_are_the_ones_lightning_writes(tmp_path, extra, recwarn):
    """Key by key, counter by counter, as Lightning's own last.ckpt and best.ckpt of the solo run."""
    jobs = [MLP + extra + [f"optimizer.lr={lr}"] for lr in (0.05, 0.02)]
    _, folders = stacked_and_solo(tmp_path, jobs, solo=[0])
    # the jobs' schedulers step after steps the stacked step took: torch's warning would say otherwise
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    for name in ("last", "best"):
        solo_file = tmp_path / "solo0" / "checkpoints" / f"{name}.ckpt"
        if not solo_file.exists():
            assert not (folders[0] / "checkpoints" / f"{name}.ckpt").exists()
            continue
        stacked = torch.load(folders[0] / "checkpoints" / f"{name}.ckpt", weights_only=True)
        solo = torch.load(solo_file, weights_only=True)
        for checkpoint, file in ((stacked, folders[0] / "checkpoints" / f"{name}.ckpt"), (solo, solo_file)):
            assert check_checkpoint(file) is None  # both sealed with the checksum of their own weights
            checkpoint.pop(CHECKSUM)
        if name == "best":  # Lightning writes best.ckpt during validation, before the epoch's end
            for checkpoint in (stacked, solo):
                checkpoint.pop("loops"), checkpoint.pop("callbacks")
        stacked_scores = {k: v for k, v in _structure(stacked).items()}
        assert stacked_scores == _structure(solo)
        assert largest_difference(stacked["state_dict"], solo["state_dict"]) < 1e-5


def test_a_groups_trajectories_keep_fewer_points_past_their_share_of_memory(tmp_path, monkeypatch):
    """Past GROUP_BYTES only the histogram steps are kept, and past 4 x GROUP_BYTES none (K jobs'
    paths cost K times a solo run's host memory)."""
    from microtrain.stack import inspect

    parameters = 3 * 16 + 16 + 16 + 1
    monkeypatch.setattr(inspect, "GROUP_BYTES", 2 * parameters * 4)  # one point of the two jobs
    jobs = [MLP + ["log.inspect_every_n_steps=5", "trainer.max_epochs=2", f"seed={seed}"] for seed in (0, 1)]
    _, folders = stacked_and_solo(tmp_path, jobs, solo=[])
    # every inspection here draws histograms (a step of 5, 50 steps: 11 points unbounded)
    assert torch.load(folders[0] / "trajectory.pt", weights_only=True)["steps"].tolist() == [0, 5, 10, 15]


def test_a_scheduler_that_cycles_the_momentum_runs_its_job_alone():
    """OneCycleLR and CyclicLR change the momentum each step, which a stack holds fixed: their
    stacked jobs diverged where the solo runs trained."""
    one_cycle = ["optimizer.momentum=0.9", "scheduler=step", "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", "~scheduler.step_size"]
    one_cycle += ["~scheduler.gamma", "+scheduler.max_lr=0.1", "+scheduler.total_steps=4"]
    assert "cycles the momentum" in str(why_alone(make_cfg(*one_cycle)))
    assert why_alone(make_cfg(*one_cycle, "+scheduler.cycle_momentum=false")) is None


def test_plateau_schedulers_stack_each_on_its_jobs_val_loss(tmp_path):
    """scheduler=plateau stacks (each job's ReduceLROnPlateau on its own val_loss, its own
    patience) and each job's scheduler and weights end as its solo twin's."""
    jobs = [MLP + ["trainer.max_epochs=6", "scheduler=plateau", f"scheduler.patience={p}", "optimizer.lr=0.2"] for p in (0, 1)]
    groups, alone = group_jobs([make_cfg(*job) for job in jobs], [0, 0])
    assert len(groups) == 1 and not alone
    _, folders = stacked_and_solo(tmp_path, jobs, solo=[0, 1])
    for k, folder in enumerate(folders):
        stacked = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
        solo = torch.load(tmp_path / f"solo{k}" / "checkpoints" / "last.ckpt", weights_only=True)
        ours, theirs = stacked["lr_schedulers"][0], solo["lr_schedulers"][0]
        assert ours["_last_lr"] == theirs["_last_lr"] and ours["num_bad_epochs"] == theirs["num_bad_epochs"]
        assert ours["best"] == pytest.approx(theirs["best"], rel=1e-5)
        assert largest_difference(stacked["state_dict"], solo["state_dict"]) < 1e-5
    lowered = [torch.load(f / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]["_last_lr"][0] for f in folders]
    assert lowered[0] < 0.2 and lowered[0] != lowered[1]  # each patience its own


def test_stacked_jobs_write_the_tensorboard_runs_of_their_solo_twins(tmp_path):
    jobs = [MLP + ["log.inspect_every_n_steps=10", f"seed={seed}"] for seed in (0, 1)]
    _, folders = stacked_and_solo(tmp_path, jobs, solo=[1])
    stacked, solo = read_events(folders[1]), read_events(tmp_path / "solo1")
    for kind in ("scalars", "histograms"):
        assert sorted(stacked.Tags()[kind]) == sorted(solo.Tags()[kind])
    for tag in ("val_loss", "val_r2", "train_loss", "weight_norm/fc1.weight", "grad_norm/fc2.bias", "update_ratio/fc1.weight", "lr"):
        ours, theirs = stacked.Scalars(tag), solo.Scalars(tag)
        assert [e.step for e in ours] == [e.step for e in theirs], tag
        assert [e.value for e in ours] == pytest.approx([e.value for e in theirs], rel=1e-4, abs=1e-6), tag
    ours, theirs = stacked.Histograms("grads/fc1.weight"), solo.Histograms("grads/fc1.weight")
    assert [e.step for e in ours] == [e.step for e in theirs]
    assert ours[-1].histogram_value.num == theirs[-1].histogram_value.num
    assert ours[-1].histogram_value.sum == pytest.approx(theirs[-1].histogram_value.sum, rel=1e-4, abs=1e-6)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(stacked.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["seed"].number_value == 1
    assert stacked.Scalars("final/val_loss")[-1].value == pytest.approx(solo.Scalars("final/val_loss")[-1].value, rel=1e-4)
    assert stacked.Scalars("dead_units/fc1")[0].value == pytest.approx(solo.Scalars("dead_units/fc1")[0].value)
    # trajectory.pt, the path report.png's loss landscape is drawn around: its solo twin's steps and weights
    ours, theirs = (torch.load(folder / "trajectory.pt", weights_only=True) for folder in (folders[1], tmp_path / "solo1"))
    assert ours["names"] == theirs["names"] and ours["steps"].tolist() == theirs["steps"].tolist() and len(ours["steps"]) > 5
    assert (ours["weights"] - theirs["weights"]).abs().max().item() < 1e-5
    from microtrain.landscape import landscape

    final = json.loads((folders[1] / "metrics.json").read_text())["train_loss"]
    view = landscape(folders[1])
    assert view.loss[view.b.abs().argmin(), view.a.abs().argmin()].item() == pytest.approx(final, rel=1e-4)


def test_classification_jobs_report_the_accuracy_torchmetrics_gives(tmp_path):
    jobs = [
        ["data=iris", "loss=cross_entropy", "model=mlp", "trainer.max_epochs=4", f"optimizer.lr={lr}", "data.test_fraction=0.2"] for lr in (0.05, 0.1)
    ]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[1])
    solo = json.loads((tmp_path / "solo1" / "metrics.json").read_text())
    for key in ("val_loss", "test_loss", "test_acc"):
        assert metrics[1][key] == pytest.approx(solo[key], rel=1e-4), key
    ours, theirs = read_events(folders[1]).Scalars("val_acc"), read_events(tmp_path / "solo1").Scalars("val_acc")
    assert [e.value for e in ours] == pytest.approx([e.value for e in theirs])


def test_a_diverging_job_is_frozen_and_the_others_finish(tmp_path):
    jobs = [MLP + [f"optimizer.lr={lr}"] for lr in (0.05, 50.0, 0.01)]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0])
    assert [m["status"] for m in metrics] == ["ok", "diverged", "ok"]
    assert metrics[1]["parameter"] in {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert metrics[1]["error"].startswith(f"training diverged at step {metrics[1]['diverged_at_step']}: loss=")
    assert json.loads((folders[1] / "metrics.json").read_text())["status"] == "diverged"
    with pytest.raises(Exception, match="diverged at step"):
        train(make_cfg(*jobs[1]), tmp_path / "solo_diverges")  # the same job alone diverges too
    from tensorboard.plugins.hparams import api_pb2, metadata

    for folder in (folders[1], tmp_path / "solo_diverges"):  # each a failed row of the HParams table, with its charts
        events = read_events(folder)._events
        sessions = events.PluginTagToContent("hparams")
        assert metadata.parse_session_end_info_plugin_data(sessions[metadata.SESSION_END_INFO_TAG]).status == api_pb2.STATUS_FAILURE
        assert metadata.parse_session_start_info_plugin_data(sessions[metadata.SESSION_START_INFO_TAG]).hparams["lr"].number_value == 50.0
        assert events.PluginTagToContent("custom_scalars")
    nonfinite = [{t for t in read_events(f).Tags()["scalars"] if t.startswith("nonfinite/")} for f in (folders[1], tmp_path / "solo_diverges")]
    assert nonfinite[0] == nonfinite[1] and nonfinite[0]  # where the NaN and Inf are, as its solo twin shows them
    assert largest_difference(checkpoint_weights(folders[0]), checkpoint_weights(tmp_path / "solo0")) < 1e-5  # its neighbour's NaNs never reach it
    assert all(torch.isfinite(t).all() for t in checkpoint_weights(folders[2]).values())


def test_early_stopping_stacks_and_each_job_stops_at_its_solo_twins_epoch(tmp_path):
    """Each job's own EarlyStopping: a job it stops is frozen (its weights, checkpoints and
    metrics those of its stop) while its neighbours go on, as its solo twin stops."""
    jobs = [EARLY + [f"optimizer.lr={lr}", f"seed={seed}"] for lr, seed in ((0.2, 3), (0.1, 0), (0.05, 1), (0.01, 2))]
    groups, alone = group_jobs([make_cfg(*job) for job in jobs], [0] * 4)
    assert [g.jobs for g in groups] == [[0, 1, 2, 3]] and not alone
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0, 1, 2, 3])
    epochs = []
    for i in range(4):
        solo = json.loads((tmp_path / f"solo{i}" / "metrics.json").read_text())
        assert (metrics[i]["status"], metrics[i]["epochs"], metrics[i]["steps"]) == ("ok", solo["epochs"], solo["steps"])
        assert largest_difference(checkpoint_weights(folders[i]), checkpoint_weights(tmp_path / f"solo{i}")) < 1e-6
        assert metrics[i]["val_loss"] == pytest.approx(solo["val_loss"], rel=1e-5)
        saved = torch.load(folders[i] / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
        theirs = torch.load(tmp_path / f"solo{i}" / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
        stopper = next(k for k in theirs if k.startswith("EarlyStopping"))
        assert saved[stopper]["wait_count"] == theirs[stopper]["wait_count"]
        assert read_events(folders[i]).Scalars("val_loss")[-1].step == solo["steps"]  # nothing written after its stop
        epochs.append(solo["epochs"])
    assert len(set(epochs)) > 2  # the jobs stopped at different epochs


def test_a_job_early_stopping_ended_stays_stopped_when_its_crashed_group_resumes(tmp_path, monkeypatch):
    """Killed after one job stopped but before the group ended (its metrics.json not yet written):
    resumed, that job stays frozen at its stop and ends as in the uninterrupted group."""

    jobs = [EARLY + [f"optimizer.lr={lr}", f"seed={seed}"] for lr, seed in ((0.2, 3), (0.01, 2))]
    whole = train_group([make_cfg(*job) for job in jobs], [tmp_path / f"whole{i}" for i in range(2)], [False, False])
    assert whole[0]["epochs"] < 10 < whole[1]["epochs"]  # the first stops early (epoch 6), the second runs on
    crashed = crash_group(monkeypatch, "_epoch_end", lambda run: run.epoch == 10, jobs, tmp_path)
    assert not (crashed[0] / "metrics.json").exists()
    resumed = [train_group([make_cfg(*job, "resume=true")], [folder], [True])[0] for job, folder in zip(jobs, crashed)]
    for ours, theirs in zip(resumed, whole):
        assert (ours["status"], ours["epochs"], ours["steps"]) == ("ok", theirs["epochs"], theirs["steps"])
    stopped, expected = checkpoint_weights(crashed[0]), checkpoint_weights(tmp_path / "whole0")
    assert all(torch.equal(stopped[k], expected[k]) for k in stopped)  # frozen at its stop: bitwise
    # the other resumed from another step, so in a group of its own: a stack of 1, which rounds as its group of 2
    assert same_weights(checkpoint_weights(crashed[1]), checkpoint_weights(tmp_path / "whole1"))


def test_a_signal_mid_epoch_stops_a_group_at_the_next_call_and_it_resumes_bitwise(tmp_path, monkeypatch):
    """A real SIGTERM to this process at step 37 of a 100-step epoch, in Lightning calls of 10
    steps: every job's last.ckpt of step 40, mid-epoch, each job interrupted; resumed, the group
    ends bitwise equal to the uninterrupted one."""
    from microtrain.run import interrupt
    from microtrain.stack import train as stack_train

    jobs = [MLP + ["data.n_samples=4000", "loop.steps_per_call=10", f"optimizer.lr={lr}", f"seed={seed}"] for lr, seed in ((0.01, 0), (0.03, 1))]
    whole = train_group([make_cfg(*job) for job in jobs], [tmp_path / f"whole{i}" for i in range(2)], [False, False])
    assert [m["steps"] for m in whole] == [300, 300]
    stepped = stack_train.StackedRun.whole_step

    def signalled_at_step_37(run, x, y):
        stepped(run, x, y)
        if run.step_count == 37:
            os.kill(os.getpid(), signal.SIGTERM)  # noted by the group's handler, acted on at the call's end

    monkeypatch.setattr(stack_train.StackedRun, "whole_step", signalled_at_step_37)
    stopped = [tmp_path / f"stopped{i}" for i in range(2)]
    try:
        metrics = train_group([make_cfg(*job) for job in jobs], stopped, [False, False])
    finally:
        interrupt.forget()  # this process's handlers back, and no signal noted
    monkeypatch.undo()
    assert [m["status"] for m in metrics] == ["interrupted"] * 2 and all(m["signal"] == "SIGTERM" for m in metrics)
    saved = torch.load(stopped[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 40 and saved["epoch"] == 0  # mid-epoch, at the next call's end
    resumed = train_group([make_cfg(*job, "resume=true") for job in jobs], stopped, [True, True])
    assert [(m["status"], m["steps"]) for m in resumed] == [("ok", 300)] * 2
    for folder, uninterrupted in zip(stopped, [tmp_path / f"whole{i}" for i in range(2)]):
        ours, theirs = checkpoint_weights(folder), checkpoint_weights(uninterrupted)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        # trajectory.pt: the first part's path up to step 40, then the resumed part's, each step once
        path, whole_path = (torch.load(f / "trajectory.pt", weights_only=True) for f in (folder, uninterrupted))
        steps = path["steps"].tolist()
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 300 and min(s for s in steps if s >= 40) == 40
        common = [(i, whole_path["steps"].tolist().index(s)) for i, s in enumerate(steps) if s in whole_path["steps"].tolist()]
        assert len(common) > 10 and all(torch.equal(path["weights"][i], whole_path["weights"][j]) for i, j in common)


def test_a_sigterm_while_lightning_sets_the_group_up_ends_its_jobs_interrupted(tmp_path, monkeypatch):
    """A SIGTERM between the fit's start and on_train_start reaches Lightning's own handler, whose
    SIGTERMException (a SystemExit) would end the process with status 0 and no metrics: the jobs
    end interrupted instead, as at any other moment."""
    from microtrain.run import interrupt
    from microtrain.stack.batches import StackedBatches

    served = StackedBatches.__iter__

    def signalled_while_set_up(batches):
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's data set-up asks for the first batch before on_train_start
        yield from served(batches)

    monkeypatch.setattr(StackedBatches, "__iter__", signalled_while_set_up)
    try:
        metrics = train_group([make_cfg(*MLP, f"optimizer.lr={lr}") for lr in (0.01, 0.03)], [tmp_path / "a", tmp_path / "b"], [False, False])
    finally:
        interrupt.forget()
    assert [(m["status"], m["signal"]) for m in metrics] == [("interrupted", "SIGTERM")] * 2


def test_inside_a_slurm_job_lightning_does_not_take_usr1_for_the_group(tmp_path, monkeypatch):
    """Lightning's SLURM auto-requeue would save the group's Trainee (which holds none of the jobs'
    state) on USR1 and requeue it: a group's Trainer is not in Lightning's SLURM environment (its
    jobs resume from their own checkpoints, stacked_slurm's submitit does the requeueing)."""
    from microtrain.stack import train as stack_train

    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "sweep",
        "SLURM_JOB_ID": "7",
        "SLURM_NODELIST": "node1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }.items():
        monkeypatch.setenv(key, value)
    before, during = signal.getsignal(signal.SIGUSR1), []
    stepped = stack_train.StackedRun.whole_step

    def watched(run, x, y):
        during.append(signal.getsignal(signal.SIGUSR1))
        stepped(run, x, y)

    monkeypatch.setattr(stack_train.StackedRun, "whole_step", watched)
    metrics = train_group([make_cfg(*MLP, f"optimizer.lr={lr}") for lr in (0.01, 0.03)], [tmp_path / "a", tmp_path / "b"], [False, False])
    assert [m["status"] for m in metrics] == ["ok", "ok"] and during and all(h == before for h in during)


def test_a_group_trains_in_a_thread_other_than_the_main_one(tmp_path):
    """Signal handlers can be set in the main thread only: a group trained from another thread
    (a notebook's background job) trains without them."""
    import threading

    found: list = []
    worker = threading.Thread(
        target=lambda: found.extend(
            train_group([make_cfg(*MLP, f"optimizer.lr={lr}") for lr in (0.01, 0.03)], [tmp_path / "a", tmp_path / "b"], [False, False])
        )
    )
    worker.start()
    worker.join(timeout=120)
    assert [m["status"] for m in found] == ["ok", "ok"]


def test_curvature_stacks_and_each_job_logs_its_solo_twins_values(tmp_path):
    jobs = [
        MLP + ["log.curvature=true", "log.inspect_every_n_steps=10", "optimizer.momentum=0.9", f"optimizer.lr={lr}", f"seed={seed}"]
        for lr, seed in ((0.01, 0), (0.03, 1))
    ]
    assert [g.jobs for g in group_jobs([make_cfg(*job) for job in jobs], [0, 0])[0]] == [[0, 1]]
    _, folders = stacked_and_solo(tmp_path, jobs, solo=[1])
    ours, theirs = read_events(folders[1]), read_events(tmp_path / "solo1")
    for tag in ("hessian_top_eigenvalue", "edge_of_stability", "gradient_noise_scale"):
        assert [e.step for e in ours.Scalars(tag)] == [e.step for e in theirs.Scalars(tag)], tag
        assert [e.value for e in ours.Scalars(tag)] == pytest.approx([e.value for e in theirs.Scalars(tag)], rel=1e-3), tag
    assert ours.Scalars("edge_of_stability")[0].value == pytest.approx((2 + 2 * 0.9) / 0.03)  # its own lr


def test_max_time_stops_a_stacked_group_as_it_stops_a_solo_run(tmp_path):
    cfgs = [make_cfg(*MLP, "trainer.max_epochs=100000", "+trainer.max_time=00:00:00:01", f"optimizer.lr={lr}") for lr in (0.01, 0.02)]
    assert group_jobs(cfgs, [0, 0])[0][0].jobs == [0, 1]
    metrics = train_group(cfgs, [tmp_path / "a", tmp_path / "b"], [False, False])
    for m in metrics:
        assert m["status"] == "ok" and 1.0 <= m["seconds"] < 10 and 0 < m["epochs"] < 100000
    saved = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    # a resume goes on with the time already spent: at least nearly all of it (the last write may fall
    # at an epoch end ms before the limit, when the next epoch stops before its first step: 0.996 s seen)
    assert saved["callbacks"]["Timer"]["time_elapsed"]["train"] >= 0.9


def test_step_checkpoints_stack_and_a_group_that_crashed_mid_epoch_resumes_bitwise(tmp_path, monkeypatch):
    """checkpoint.every_n_steps with any torch.optim class that has a rule (RMSprop by name): the
    jobs stack, match their solo twins, and a group killed after the mid-epoch checkpoint of
    step 32 resumes from it bitwise; a job's mid-epoch checkpoint also resumes as a solo run. Every
    8 steps: Lightning calls of 8 steps, which do not divide the 25-step epochs, so the checkpoint's
    loop counters must count calls as a solo run's loop does."""

    jobs = [
        MLP + ["checkpoint.every_n_steps=8", "optimizer=torch", "optimizer.name=RMSprop", f"optimizer.lr={lr}", f"seed={seed}"]
        for lr, seed in ((0.01, 0), (0.003, 1))
    ]
    assert [g.jobs for g in group_jobs([make_cfg(*job) for job in jobs], [0, 0])[0]] == [[0, 1]]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0])
    assert largest_difference(checkpoint_weights(folders[0]), checkpoint_weights(tmp_path / "solo0")) < 1e-6 and metrics[0]["steps"] == 75

    # killed after the mid-epoch checkpoint of step 32: 7 batches into the second epoch (25 steps each)
    crashed = crash_group(monkeypatch, "_checkpoint_mid_epoch", lambda run: run.step_count == 32, jobs, tmp_path)
    assert torch.load(crashed[0] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 32
    shutil.copytree(crashed[1], tmp_path / "solo_resumed" / "run")
    resumed = train_group([make_cfg(*job, "resume=true") for job in jobs], crashed, [True, True])
    assert [m["steps"] for m in resumed] == [75, 75]
    for folder in crashed:  # its history, as a solo run's resume writes it
        (entry,) = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
        assert entry["resumed_at_step"] == 32 and entry["changed"] == []
    for folder, whole in zip(crashed, folders):
        ours, theirs = checkpoint_weights(folder), checkpoint_weights(whole)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    train(make_cfg(*jobs[1], "resume=true"), tmp_path / "solo_resumed" / "run")
    assert largest_difference(checkpoint_weights(tmp_path / "solo_resumed" / "run"), checkpoint_weights(folders[1])) < 1e-6


def test_an_accumulating_group_that_crashed_mid_epoch_resumes_bitwise(tmp_path, monkeypatch):
    """+trainer.accumulate_grad_batches=2 (13 steps an epoch of 25 batches) with a checkpoint
    every 5 steps: killed after step 20 (14 batches into the second epoch), the group resumes
    from that batch bitwise, and a job's checkpoint resumes as its solo run, within 1e-6."""
    jobs = [
        [*MLP, "+trainer.accumulate_grad_batches=2", "checkpoint.every_n_steps=5", f"optimizer.lr={lr}", f"seed={seed}"]
        for lr, seed in ((0.05, 0), (0.02, 1))
    ]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[])
    assert [m["steps"] for m in metrics] == [39, 39]
    crashed = crash_group(monkeypatch, "_checkpoint_mid_epoch", lambda run: run.step_count == 20, jobs, tmp_path)
    saved = torch.load(crashed[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 20 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["position"] == 14
    shutil.copytree(crashed[1], tmp_path / "solo_resumed" / "run")
    resumed = train_group([make_cfg(*job, "resume=true") for job in jobs], crashed, [True, True])
    assert [m["steps"] for m in resumed] == [39, 39]
    for folder, whole in zip(crashed, folders):
        ours, theirs = checkpoint_weights(folder), checkpoint_weights(whole)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    train(make_cfg(*jobs[1], "resume=true"), tmp_path / "solo_resumed" / "run")
    assert largest_difference(checkpoint_weights(tmp_path / "solo_resumed" / "run"), checkpoint_weights(folders[1])) < 1e-6


def test_a_resumed_groups_speed_counts_only_the_steps_it_took(tmp_path):
    """samples_per_s of a resumed group: the steps of this process over its time (the steps
    before the checkpoint counted too would make it ~20x too high here)."""
    folders = [tmp_path / f"j{i}" for i in range(2)]
    jobs = [[*MLP, "trainer.max_epochs=20", f"optimizer.lr={lr}", "log.every_n_steps=100"] for lr in (0.05, 0.02)]
    train_group([make_cfg(*job) for job in jobs], folders, [False, False])
    earlier = [e.value for e in read_events(folders[0]).Scalars("samples_per_s")]
    train_group([make_cfg(*job, "trainer.max_epochs=21", "resume=true") for job in jobs], folders, [True, True])
    points = read_events(folders[0]).Scalars("samples_per_s")
    assert points[-1].step == 525 and 0 < points[-1].value < 2 * max(earlier)


def test_jobs_group_by_what_must_match_and_say_why_the_rest_run_alone():
    cfgs = [
        make_cfg(*job)
        for job in (
            ["model=mlp", "optimizer.lr=0.1"],
            ["model=mlp", "optimizer.lr=0.01", "seed=3"],  # one group
            ["model=mlp", "model.hidden=8"],
            ["model=mlp", "model.hidden=8", "optimizer.momentum=0.5"],  # another
            ["model=mlp", "+callbacks.lrs._target_=lightning.pytorch.callbacks.LearningRateMonitor"],  # alone: a callback it does not run
            ["optimizer=torch", "optimizer.name=Adamax", "optimizer.lr=0.01"],  # alone: no stacked update
            ["model=linear"],  # alone: no other linear job
        )
    ]
    groups, alone = group_jobs(cfgs, [0] * len(cfgs))
    assert [g.jobs for g in groups] == [[0, 1], [2, 3]]
    assert "callbacks.lrs" in alone[4] and "Adamax has no stacked update" in alone[5] and "model.name" in alone[6]
    from microtrain.stack.groups import describe

    from microtrain.stack.groups import Group

    assert describe(groups, alone, 7)[1] == "  group 1: 2 jobs (#0, #1)"
    assert describe([Group([0, 1, 2, 3, 7])], {}, 5)[1] == "  group 1: 5 jobs (#0-#3, #7)"


def test_a_job_that_runs_alone_names_its_nearest_job_and_its_overrides():
    """The keys one job lacks count as differences (an MLP's model.hidden beside a linear model):
    the nearest job is the one that differs least, named by its number in the sweep."""
    from microtrain.stack.groups import describe

    jobs = [[f"model={m}", f"optimizer={o}", f"data.batch_size={b}"] for m in ("linear", "mlp") for o in ("sgd", "adam") for b in (16, 32)]
    groups, alone = group_jobs([make_cfg(*job) for job in jobs], [0] * len(jobs), numbers=[10 + i for i in range(len(jobs))])
    assert groups == [] and sorted(alone) == list(range(8))
    lines = describe(groups, alone, len(jobs), [" ".join(job) for job in jobs])
    assert lines[5] == (
        "  job #4 (model=mlp optimizer=sgd data.batch_size=16) runs alone: "
        "no other job shares all its settings; the nearest, #15, differs in data.batch_size"
    )


def test_stacked_sweep_through_hydra_gives_every_job_its_own_run(tmp_path, capsys):
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "-m",
        "hydra/launcher=stacked",
        *MLP,
        "optimizer=sgd,adam",
        "optimizer.lr=0.01,0.03",
        "optimizer.weight_decay=${optimizer.lr}",  # config.yaml holds its value, stacked or solo
        "seed=0,1",
        "device=cpu",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert code == 0, err
    assert "stacked: 8 of 8 jobs in 2 group(s)" in out and "the groups differ in optimizer._target_" in out
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        folder = Path(row["folder"])
        assert (folder / ".hydra" / "overrides.yaml").is_file() and (folder / "train.log").is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "checkpoints" / "best.ckpt").is_file()
        assert json.loads((folder / "metrics.json").read_text())["stacked"]["jobs"] == 4
        assert any(t.startswith("weights/") for t in read_events(folder).Tags()["histograms"])
    for number, row in enumerate(rows[:1] + rows[-1:]):  # each job's config.yaml is its solo run's with the same overrides
        folder = Path(row["folder"])
        overrides = (folder / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split()
        assert run_in_process(capsys, "train.py", *overrides, f"hydra.run.dir={tmp_path / 'solo' / str(number)}")[0] == 0
        assert (folder / "config.yaml").read_text() == (tmp_path / "solo" / str(number) / "config.yaml").read_text()
    job = Path(rows[0]["folder"])
    assert run_in_process(capsys, "report.py", str(tmp_path))[0] == 0
    explained = run_in_process(
        capsys,
        "explain_step.py",
        *(job / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split(),
        f"hydra.run.dir={tmp_path / 'explained'}",
    )
    assert explained[0] == 0, explained[2]


def test_a_one_job_stacked_sweep_is_its_solo_run_bitwise(tmp_path, capsys):
    code, out, err = run_in_process(
        capsys, "train.py", "-m", "hydra/launcher=stacked", *MLP, "optimizer.lr=0.05", "device=cpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert code == 0, err
    assert "stacked: 0 of 1 jobs" in out and "runs alone: it is the only job that can stack" in out  # a stack of one is the solo run itself
    code, _, err = run_in_process(capsys, "train.py", *MLP, "optimizer.lr=0.05", "device=cpu", f"hydra.run.dir={tmp_path / 'solo'}")
    assert code == 0, err
    (job,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")]
    ours, theirs = checkpoint_weights(job), checkpoint_weights(tmp_path / "solo")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_stacked_submitit_local_sends_each_group_as_one_submitit_job(tmp_path, capsys):
    """hydra/launcher=stacked_submitit_local: 2 groups are 2 submitit processes, each training its
    group stacked; every job ends ok with the folder and summary row of the stacked launcher."""
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "-m",
        "hydra/launcher=stacked_submitit_local",
        "model=linear,mlp",
        "optimizer.lr=0.01,0.1",
        "trainer.max_epochs=1",
        "device=cpu",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert code == 0, err
    assert "stacked: 4 of 4 jobs in 2 group(s)" in out
    submitted = sorted(p.name for p in (tmp_path / ".submitit").iterdir() if p.name != "%j")  # a folder per submitit job
    assert len(submitted) == 2 and str(os.getpid()) not in submitted  # local jobs are processes of their own
    for job in submitted:
        assert "jobs stacked" not in (tmp_path / ".submitit" / job / f"{job}_0_log.err").read_text()  # trained, quietly
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        folder = Path(row["folder"])
        assert json.loads((folder / "metrics.json").read_text())["stacked"]["jobs"] == 2
        assert (folder / ".hydra" / "overrides.yaml").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_optuna_trials_train_stacked_in_batches_of_n_jobs(tmp_path, capsys):
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "-m",
        "hparams_search=optuna_stacked",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        *MLP,
        "device=cpu",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert code == 0, err
    assert out.count("stacked: 2 of 2 jobs in 1 group(s)") == 2
    assert len(list(tmp_path.glob("*/metrics.json"))) == 4


@pytest.mark.slow
def test_compiled_stacked_step_matches_the_eager_one(tmp_path):
    jobs = [MLP + ["trainer.max_epochs=2", f"optimizer.lr={lr}", "optimizer.momentum=0.9"] for lr in (0.01, 0.03)]
    eager = train_group([make_cfg(*j) for j in jobs], [tmp_path / f"eager{i}" for i in range(2)], [False, False])
    compiled = train_group([make_cfg(*j, "loop.compile=true") for j in jobs], [tmp_path / f"compiled{i}" for i in range(2)], [False, False])
    assert compiled[0]["compile_seconds"] > 0 and "compile_seconds" not in eager[0]
    for i in range(2):
        assert largest_difference(checkpoint_weights(tmp_path / f"eager{i}"), checkpoint_weights(tmp_path / f"compiled{i}")) < 1e-5


STACKED_GRID = [
    "-m",
    "hydra/launcher=stacked",
    "model=mlp",
    "model.hidden=8,16",
    "optimizer.lr=0.01,0.03",
    "trainer.max_epochs=20",
    "checkpoint.budget=0",
    "device=cpu",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def uninterrupted_stacked_sweep(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stacked") / "whole"
    whole = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *STACKED_GRID, f"hydra.sweep.dir={folder}"], capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    assert not whole.stderr.strip(), whole.stderr  # Lightning's banner, tips and warnings quieted, as in a solo run
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_stacked_sweep_resumes_bitwise_and_keeps_finished_jobs(tmp_path, uninterrupted_stacked_sweep, how):
    """A signal while the second group trains. SIGTERM: every job of the group ends interrupted
    with its last.ckpt, the sweep writes its summary and exits 143. Then resume=true skips the
    finished first group, resumes the second from its checkpoints, and ends bitwise equal to an
    uninterrupted sweep."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *STACKED_GRID]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, f"hydra.sweep.dir={killed}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    second: list[Path] = []
    while time.monotonic() < deadline and not (len(second) == 2 and all((f / "checkpoints" / "last.ckpt").exists() for f in second)):
        second = sorted(killed.glob("*model.hidden=16*"))
        time.sleep(0.01)
    # frozen as soon as the second group checkpointed (a fast machine ends its 500 steps in well
    # under a second), then signalled: a SIGTERM stays pending until the sweep goes on
    process.send_signal(signal.SIGSTOP)
    assert not any((f / "metrics.json").exists() for f in second), "the second group ended before the signal"
    os.kill(process.pid, how)
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=120)
    if how == signal.SIGKILL:
        assert len(second) == 2 and not any((f / "metrics.json").exists() for f in second), "the sweep ended before the kill"
    else:
        assert process.returncode == 143 and "Traceback" not in err, err
        statuses = [json.loads((f / "metrics.json").read_text()) for f in second]
        assert [m["status"] for m in statuses] == ["interrupted"] * 2 and all("resume=true" in m["resume"] for m in statuses)
        assert "the sweep was interrupted" in out and (killed / "summary.csv").is_file()
    (first,) = [f / "metrics.json" for f in killed.glob("*model.hidden=8*optimizer.lr=0.01*")]
    finished_before = files_of(first.parent)
    resumed = subprocess.run([*command, f"hydra.sweep.dir={killed}", "resume=true"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 job(s) already finished" in resumed.stdout and "resume: 2 job(s) go on from their last.ckpt, from step" in resumed.stdout
    assert files_of(first.parent) == finished_before  # a job finished before the signal: every file as it was (.hydra/, train.log)
    for folder in uninterrupted_stacked_sweep.iterdir():
        if folder.is_dir():
            assert json.loads((killed / folder.name / "metrics.json").read_text())["status"] == "ok"
            ours, theirs = checkpoint_weights(killed / folder.name), checkpoint_weights(folder)
            assert all(torch.equal(ours[k], theirs[k]) for k in ours), folder.name
            if how == signal.SIGTERM:  # the curves keep their grid: no missing validation point, no shifted window
                mine, whole = read_events(killed / folder.name), read_events(folder)
                for tag in ("train_loss_step", "val_loss"):
                    assert [e.step for e in mine.Scalars(tag)] == [e.step for e in whole.Scalars(tag)], (folder.name, tag)


def test_max_jobs_splits_a_group_and_memory_bounds_it(tmp_path, capsys, monkeypatch):
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "-m",
        "hydra/launcher=stacked",
        "hydra.launcher.max_jobs=2",
        *MLP,
        "trainer.max_epochs=1",
        "optimizer.lr=0.01,0.02,0.03",
        "device=cpu",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert code == 0, err
    assert "group 1 trains in 2 parts of at most 2 jobs (hydra.launcher.max_jobs=2)" in out
    assert "group 1, part 1: 2 jobs stacked" in out and "group 1, part 2: 1 job stacked" in out
    assert len(list(tmp_path.glob("*/checkpoints/last.ckpt"))) == 3
    from microtrain.stack import plan

    cfg = make_cfg(*MLP, "device=cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (4 * 1024**2, 80 * 1024**3))  # 4 MiB free
    fits = plan._jobs_that_fit(cfg, 10_000)
    assert 1 <= fits < 10_000  # a 16-unit MLP with batch 32 takes ~10 KiB a job: ~100 fit in a quarter of 4 MiB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (64 * 1024**3, 80 * 1024**3))
    assert plan._jobs_that_fit(cfg, 10_000) == 10_000


def test_a_launcher_chosen_without_a_sweep_says_it_is_one_run(tmp_path, capsys):
    code, out, err = run_in_process(capsys, "train.py", "hydra/launcher=stacked", "trainer.max_epochs=1", "device=cpu", f"hydra.run.dir={tmp_path}")
    assert code == 0 and "note: hydra/launcher=stacked launches the jobs of a sweep (-m); without -m this is one run" in out
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.parametrize(
    "choice, override, message",
    [
        (
            "stacked",
            "hydra.launcher.max_job=4",
            "hydra.launcher.max_job is not a key of the config (did you mean hydra.launcher.max_jobs?); hydra.launcher takes: max_jobs",
        ),
        (
            "stacked",
            "+hydra.launcher.max_job=4",
            "hydra.launcher.max_job is not a setting of StackedLauncher (did you mean max_jobs?); it takes: max_jobs",
        ),
        (
            "joblib",
            "hydra.launcher.n_job=2",
            "hydra.launcher.n_job is not a key of the config (did you mean hydra.launcher.n_jobs?); hydra.launcher takes: n_jobs, ",
        ),
    ],
)
def test_a_misspelled_launcher_setting_names_the_ones_it_takes(tmp_path, capsys, choice, override, message):
    """A launcher takes no key it does not name: Hydra's way out (+key=value) would fail at its start."""
    code, out, err = run_in_process(
        capsys, "train.py", "-m", f"hydra/launcher={choice}", override, "seed=0,1", "device=cpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(f"error: {message}")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5", "true"])
@pytest.mark.parametrize(
    "setting",
    [
        "hydra/launcher=stacked hydra.launcher.max_jobs",
        "hydra/launcher=stacked_submitit_local hydra.launcher.max_jobs",
        "hydra.sweeper.max_batch_size",
    ],
)
def test_a_bad_max_jobs_is_one_line_before_anything_is_written(tmp_path, capsys, value, setting):
    *choice, key = setting.split()
    code, out, err = run_in_process(
        capsys, "train.py", "-m", *choice, f"{key}={value}", "optimizer.lr=0.01,0.1", "device=cpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert code == 2 and err.strip().splitlines() == [err.strip()] and f"error: {key}={value}" in err
    assert "must be a whole number" in err or "could not be converted to Integer" in err  # the check's own, or the typed config's
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("optimizer", ["sgd_nesterov", "adam", "adamw_clipped", "rmsprop", "adagrad"])
def test_a_stack_of_one_is_the_plain_torch_loop_bitwise(optimizer):
    """K = 1: nn.Linear's kernels, the loss module's reduction and torch.optim's own update
    arithmetic: every loss, weight and optimizer state equals a plain loop's (zero_grad, forward,
    backward, clip_grad_norm_, torch.optim's step) to the bit, across a learning-rate change."""
    from microtrain.models import MLP
    from microtrain.stack.step import StackedStep

    make = {
        "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=False),
        "adam": lambda p: torch.optim.Adam(p, lr=0.01, foreach=False),
        "adamw_clipped": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, foreach=False),
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, foreach=False),
        "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, foreach=False),
    }[optimizer]
    clip = 0.5 if optimizer.endswith("clipped") else None
    torch.manual_seed(0)
    model = MLP(3, 16, 2)
    twin = copy.deepcopy(model)
    stacked = StackedStep([model], [make(model.parameters())], torch.nn.MSELoss(), torch.device("cpu"), torch.float32, clip_val=clip, solo=True)
    alone = make(twin.parameters())
    generator = torch.Generator().manual_seed(1)
    for i in range(40):
        x, y = torch.randn(1, 32, 3, generator=generator), torch.randn(1, 32, 2, generator=generator)
        if i == 20:  # a scheduler's step
            stacked.set_lr([0.003])
            alone.param_groups[0]["lr"] = 0.003
        losses, _ = stacked(x, y)
        alone.zero_grad()
        loss = torch.nn.functional.mse_loss(twin(x[0]), y[0])
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(twin.parameters(), clip, foreach=False)
        alone.step()
        assert torch.equal(losses[0], loss.detach()), i
    params, state = stacked.job_state(0)
    for (name, param), slot in zip(twin.named_parameters(), state):
        assert torch.equal(params[name], param.detach()), name
        assert slot.keys() == alone.state[param].keys() and all(torch.equal(slot[k], alone.state[param][k]) for k in slot), name


def test_a_stacked_job_without_momentum_checkpoints_no_momentum_buffer_as_its_solo_run(tmp_path):
    """Jobs with and without momentum stack (the stack holds a buffer for all); each job's
    last.ckpt and best.ckpt hold the optimizer state its solo run's torch.optim holds."""
    jobs = [[*MLP, "trainer.max_epochs=2", f"optimizer.momentum={mu}", f"seed={seed}"] for mu, seed in ((0.0, 0), (0.9, 1))]
    metrics, folders = stacked_and_solo(tmp_path, jobs, solo=[0, 1])
    assert [m["stacked"]["jobs"] for m in metrics] == [2, 2]
    for i in (0, 1):
        for name in ("last", "best"):
            ours = torch.load(folders[i] / "checkpoints" / f"{name}.ckpt", weights_only=True)["optimizer_states"][0]["state"]
            theirs = torch.load(tmp_path / f"solo{i}" / "checkpoints" / f"{name}.ckpt", weights_only=True)["optimizer_states"][0]["state"]
            assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in theirs.items()}, (i, name)
    assert not torch.load(folders[0] / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]  # SGD without momentum: none


@pytest.mark.parametrize("momenta", [(0.0, 0.9), (0.9, 0.0)])
def test_a_stack_resumed_from_optimizers_with_different_state_keys_goes_on_as_each_alone(momenta):
    """SGD keeps no momentum buffer for a job without momentum: a stack built from optimizers that
    have stepped (a resume) holds every job's state, whichever job lacks a key, and each job goes
    on as its optimizer would alone."""
    from microtrain.stack.step import StackedStep

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)) for _ in momenta]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=mu) for m, mu in zip(models, momenta)]
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 16, 3, generator=generator), torch.randn(2, 16, 1, generator=generator)) for _ in range(10)]

    def alone(k: int, steps: list) -> None:
        for x, y in steps:
            optimizers[k].zero_grad()
            torch.nn.functional.mse_loss(models[k](x[k]), y[k]).backward()
            optimizers[k].step()

    for k in (0, 1):
        alone(k, batches[:5])  # the first part, as each job's own run
    stacked = StackedStep(models, optimizers, torch.nn.MSELoss(), torch.device("cpu"), torch.float32, start_step=5)
    for x, y in batches[5:]:
        stacked(x, y)
    for k in (0, 1):
        alone(k, batches[5:])
        for name, param in models[k].named_parameters():
            torch.testing.assert_close(stacked.params[stacked.names.index(name)][k], param.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_16_mixed_stacked_steps_keep_each_jobs_loss_scale_as_its_grad_scaler(monkeypatch, optimizer):
    """device.precision=16-mixed: each stacked job's loss scale, skipped steps and updates are
    those of torch.amp.GradScaler with torch.optim on the job alone, under float16 autocast
    (on the CPU here: Lightning's Trainer turns 16-mixed into bf16-mixed on a CPU; the run on
    CUDA is tests/test_cuda.py's). A scale of 2^24 overflows the first steps' gradients in
    float16, so steps are skipped and the scale backs off, differently for each job."""
    from microtrain.engine import loss_scale
    from microtrain.stack.step import StackedStep

    monkeypatch.setattr(loss_scale, "INTERVAL", 3)  # growth after 3 good steps: seen within the test's steps
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)) for _ in range(2)]
    twins = [copy.deepcopy(m) for m in models]
    rates = (0.01, 0.02)
    make = (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)) if optimizer == "sgd_momentum" else (lambda p, lr: torch.optim.Adam(p, lr=lr))
    stacked = StackedStep(
        models,
        [make(m.parameters(), lr) for m, lr in zip(models, rates)],
        torch.nn.MSELoss(),
        torch.device("cpu"),
        torch.float32,
        loss_scale=(torch.tensor([2.0**24, 2.0**10]), torch.zeros(2, dtype=torch.int32)),
    )
    solo = [make(m.parameters(), lr) for m, lr in zip(twins, rates)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=3) for scale in (2.0**24, 2.0**10)]
    generator = torch.Generator().manual_seed(1)
    skipped = [0, 0]
    for _ in range(12):
        x, y = torch.randn(2, 32, 3, generator=generator) * 3, torch.randn(2, 32, 1, generator=generator) * 3
        with torch.autocast("cpu", dtype=torch.float16):
            losses, _ = stacked(x, y)
        for k, (model, optimizer, scaler) in enumerate(zip(twins, solo, scalers)):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(model(x[k]), y[k])
            scaler.scale(loss).backward()
            before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            skipped[k] += scaler.get_scale() < before
            assert losses[k].item() == pytest.approx(loss.item(), rel=5e-3)  # float16 rounds a batched product elsewhere
            assert stacked.varying["loss_scale"][k].item() == scaler.get_scale()
            assert int(stacked.tracker[k]) == scaler.state_dict()["_growth_tracker"]
            for name, param in model.named_parameters():
                torch.testing.assert_close(stacked.params[stacked.names.index(name)][k], param.detach(), rtol=1e-2, atol=1e-3)  # float16's
    assert skipped[0] >= 2 and skipped != [0, 0]  # overflows skipped (the first job's several), and the scales moved apart
    if optimizer == "adam":  # its step count advanced only on the steps taken
        counts = [solo[k].state[twins[k][0].weight]["step"].item() for k in (0, 1)]
        assert stacked.state[0]["step"].tolist() == counts == [12 - n for n in skipped]
    assert "16-mixed" in why_alone(make_cfg("device.precision=16-mixed", "optimizer.momentum=0.9", "optimizer.dampening=0.5"))
    assert why_alone(make_cfg("device.precision=16-mixed", "optimizer.momentum=0.9")) is None  # without dampening it stacks


def test_16_mixed_groups_checkpoint_each_jobs_scaler_and_resume_from_it(tmp_path, monkeypatch, recwarn):
    """The plumbing of 16-mixed stacks, on the CPU (where Lightning's Trainer autocasts in
    bfloat16 instead: the numbers are tests/test_cuda.py's): each job's last.ckpt holds its
    GradScaler's state under Lightning's key, and a resumed group goes on from it."""
    from microtrain import device
    from microtrain.engine.loss_scale import INIT

    real = device.resolve
    monkeypatch.setattr(
        device, "resolve", lambda cfg: device.DevicePlan("cpu", "16-mixed", "cpu") if str(cfg["precision"]) == "16-mixed" else real(cfg)
    )
    jobs = [MLP + ["device=cpu", "device.precision=16-mixed", f"optimizer.lr={lr}"] for lr in (0.01, 0.02)]
    folders = [tmp_path / "a", tmp_path / "b"]
    assert [m["status"] for m in train_group([make_cfg(*job) for job in jobs], folders, [False, False])] == ["ok", "ok"]
    states = [torch.load(f / "checkpoints" / "last.ckpt", weights_only=True)["MixedPrecision"] for f in folders]
    for state in states:
        assert set(state) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
        assert state["scale"] == INIT and state["_growth_tracker"] == 75  # bfloat16 here: no step overflowed
    saved = torch.load(folders[0] / "checkpoints" / "last.ckpt", weights_only=True)
    saved["MixedPrecision"].update(scale=1024.0, _growth_tracker=1990)  # 10 good steps from its next growth
    torch.save(saved, folders[0] / "checkpoints" / "last.ckpt")
    longer = [[*job, "trainer.max_epochs=4"] for job in jobs]
    again = train_group([make_cfg(*job) for job in longer], folders, [True, True])
    assert [m["steps"] for m in again] == [100, 100]
    after = [torch.load(f / "checkpoints" / "last.ckpt", weights_only=True)["MixedPrecision"] for f in folders]
    assert (after[0]["scale"], after[0]["_growth_tracker"]) == (2048.0, 15)  # went on from the saved scale: grew after 10 steps
    assert (after[1]["scale"], after[1]["_growth_tracker"]) == (INIT, 100)  # and from 75 (a fresh scaler would count 25)


def test_a_max_time_mapping_stacks(tmp_path, capsys):
    """+trainer.max_time={minutes: 5} (the form the error line suggests) reaches Lightning's Timer
    as a dict, as a solo run's Trainer gets it (a DictConfig failed every job of the group)."""
    code, out, err = one_epoch_stacked(capsys, tmp_path, "optimizer.lr=0.01,0.02", "+trainer.max_time={minutes: 5}")
    assert code == 0 and "stacked: 2 of 2 jobs in 1 group(s)" in out, out + err
    assert [json.loads(p.read_text())["status"] for p in sorted(tmp_path.glob("*/metrics.json"))] == ["ok", "ok"]
