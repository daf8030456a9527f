"""Real Lightning runs through the config system, read back with TensorBoard's own reader."""

import json
from pathlib import Path

import pytest
import torch

from microtrain.errors import ConfigError
from microtrain.engine.build import prepare
from microtrain.training import train
from tests_helpers import make_cfg, read_events

LINEAR_PARAMS = ["weight", "bias"]
MLP_PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.mark.parametrize("model, params", [("linear", LINEAR_PARAMS), ("mlp", MLP_PARAMS)])
def test_run_logs_every_parameter_and_loss_falls(tmp_path, model, params):
    result = train(make_cfg(f"model={model}", "log.inspect_every_n_steps=10"), tmp_path)
    events = read_events(tmp_path)
    histograms = set(events.Tags()["histograms"])
    scalars = set(events.Tags()["scalars"])
    for name in params:
        assert {f"weights/{name}", f"grads/{name}"} <= histograms
        assert {f"weight_norm/{name}", f"grad_norm/{name}", f"update_ratio/{name}"} <= scalars
    assert {"lr", "train_loss_step", "train_loss", "val_loss"} <= scalars
    losses = [s.value for s in events.Scalars("train_loss_step")]
    assert losses[-1] < 0.5 * losses[0]
    # histograms every 10 steps: 500 steps -> steps 0, 10, ..., 490
    assert [h.step for h in events.Histograms(f"grads/{params[0]}")] == list(range(0, 500, 10))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["steps"] == 500
    assert metrics["train_loss"] == pytest.approx(result.metrics["train_loss"])
    assert metrics["val_loss"] is not None and metrics["val_loss"] < 0.05
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "model:" in (tmp_path / "config.yaml").read_text()


def test_linear_recovers_the_true_weights(tmp_path):
    result = train(make_cfg("data.n_features=4", "data.n_outputs=2"), tmp_path)
    truth = json.loads((tmp_path / "data_truth.json").read_text())
    model = result.module.model
    for name in ("weight", "bias"):
        true = torch.tensor(truth[name])
        learned = getattr(model, name).detach()
        assert ((learned - true).abs() <= 0.05 * true.abs()).all(), (name, learned, true)


def test_update_ratio_matches_the_weights_it_describes(tmp_path):
    """With full-batch SGD on inline rows, step 0's update ratio is lr·‖grad‖/‖w‖."""
    cfg = make_cfg(
        "data=inline",
        "model.init_values={weight:[[0.8693]],bias:[-0.2126]}",
        "optimizer.lr=0.01",
        "trainer.max_steps=1",
        "log.inspect_every_n_steps=1",
    )
    train(cfg, tmp_path)
    events = read_events(tmp_path)
    grad = events.Scalars("grad_norm/weight")[0].value
    weight = events.Scalars("weight_norm/weight")[0].value
    assert grad == pytest.approx(18.0241, abs=2e-3)  # the notebook's dL/dw
    assert events.Scalars("update_ratio/weight")[0].value == pytest.approx(0.01 * grad / weight, rel=1e-5)


def test_hparams_carry_real_final_metrics(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = train(make_cfg("optimizer.lr=0.1", "trainer.max_epochs=2"), tmp_path)
    events = read_events(tmp_path)
    assert events.Scalars("final/val_loss")[-1].value == pytest.approx(result.metrics["val_loss"])
    assert events.Scalars("final/optimality_gap")[-1].value == pytest.approx(result.metrics["optimality_gap"])  # metrics.json had it, TensorBoard not
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(0.1)
    assert start.session_start_info.hparams["model"].string_value == "linear"


def test_hparams_name_the_swept_groups_and_the_precision():
    """callbacks=none,early_stopping or device.precision=32,64 must tell a sweep's sessions apart;
    where a run trains (device=cpu, its threads) is no hyper-parameter."""
    from microtrain.monitor.hparams import hparams_of

    swept = ["callbacks=early_stopping", "scheduler=cosine", "device.precision=64", "device=cpu", "device.threads=2"]
    params = hparams_of(make_cfg(*swept), swept)
    assert {k: params[k] for k in ("callbacks", "scheduler", "device.precision")} == {
        "callbacks": "early_stopping",
        "scheduler": "cosine",
        "device.precision": 64,
    }
    assert [k for k in params if k.startswith("device")] == ["device.precision"]
    assert hparams_of(make_cfg("callbacks=none"), ["callbacks=none"])["callbacks"] == "none"


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    def weights(seed, folder):
        result = train(make_cfg(f"seed={seed}", "model=mlp", "trainer.max_epochs=2"), tmp_path / folder)
        return [p.detach().clone() for p in result.module.model.parameters()]

    a, b, c = weights(1, "a"), weights(1, "b"), weights(2, "c")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_inline_data_is_one_full_batch_without_validation(tmp_path):
    result = train(make_cfg("data=inline", "trainer.max_epochs=3"), tmp_path)
    assert result.metrics["steps"] == 3 and result.metrics["val_loss"] is None


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers_and_scheduler_train(tmp_path, optimizer):
    cfg = make_cfg(
        f"optimizer={optimizer}",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        "trainer.max_epochs=3",
        "log.inspect_every_n_steps=25",
    )
    train(cfg, tmp_path)
    lrs = [s.value for s in read_events(tmp_path).Scalars("lr")]
    start = cfg.optimizer.lr
    assert lrs == pytest.approx([start, start / 2, start / 4, start / 8])  # the last: after the final epoch


def test_plateau_scheduler_steps_on_each_validations_val_loss(tmp_path):
    """scheduler=plateau: torch's own ReduceLROnPlateau, fed the val_loss TensorBoard holds for
    each epoch, ends where the run's scheduler did (its lr lowered twice)."""
    cfg = make_cfg("scheduler=plateau", "scheduler.patience=0", "optimizer.lr=0.5", "trainer.max_epochs=6")
    train(cfg, tmp_path)
    val_losses = [e.value for e in read_events(tmp_path).Scalars("val_loss")]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5), factor=0.5, patience=0)
    for value in val_losses:
        replay.step(value)
    assert len(val_losses) == 6 and saved["_last_lr"] == replay.get_last_lr() == [0.125]
    assert saved["best"] == pytest.approx(replay.best, rel=1e-6) and saved["num_bad_epochs"] == replay.num_bad_epochs
    # Lightning's sanity check runs the validation hooks, then forgets its val_loss: no step on it
    every_other = ["+trainer.num_sanity_val_steps=1", "+trainer.check_val_every_n_epoch=2", "trainer.max_epochs=2"]
    assert train(make_cfg("scheduler=plateau", *every_other), tmp_path / "sanity").metrics["status"] == "ok"


def test_plateau_settings_are_checked_for_reduce_lr_on_plateau_only():
    """mode and factor are other schedulers' settings too (CyclicLR's mode, ConstantLR's factor)."""
    from microtrain.config import schema

    schema.check(
        make_cfg(
            "scheduler=step",
            "scheduler._target_=torch.optim.lr_scheduler.ConstantLR",
            "~scheduler.step_size",
            "~scheduler.gamma",
            "+scheduler.factor=1.0",
        )
    )
    with pytest.raises(ConfigError, match="scheduler.factor=1.0 must be below 1"):
        schema.check(make_cfg("scheduler=plateau", "scheduler.factor=1.0"))


def test_list_arguments_reach_torch_as_lists_and_the_checkpoint_loads(tmp_path):
    """+optimizer.betas=[0.9,0.99] of optimizer=torch and a scheduler's milestones: an OmegaConf
    list saved in last.ckpt made it refuse to load (weights_only), so resume and predict failed."""
    cfg = make_cfg(
        "optimizer=torch",
        "optimizer.name=Adamax",
        "+optimizer.betas=[0.9,0.99]",
        "scheduler=step",
        "scheduler._target_=torch.optim.lr_scheduler.MultiStepLR",
        "~scheduler.step_size",
        "+scheduler.milestones=[1,2]",
        "trainer.max_epochs=2",
    )
    train(cfg, tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(saved["optimizer_states"][0]["param_groups"][0]["betas"]) == [0.9, 0.99]
    assert saved["lr_schedulers"][0]["last_epoch"] == 2


def test_an_optimizer_that_cannot_take_a_step_is_refused_before_the_run(tmp_path):
    """SparseAdam (dense gradients) and arguments torch.optim checks only in step(): one line before
    anything is written (test_reliability.py), not an "unexpected" error once training has started."""
    for overrides, words in (
        (["optimizer.name=SparseAdam"], "optimizer torch.optim.SparseAdam cannot take a step with these settings: SparseAdam does not support dense"),
        (["optimizer.name=Rprop", "+optimizer.step_sizes=1"], "optimizer torch.optim.Rprop cannot take a step with these settings"),
    ):
        with pytest.raises(ConfigError, match=words):
            train(make_cfg("optimizer=torch", *overrides), tmp_path / "run")


def test_any_torch_optimizer_from_config(tmp_path):
    cfg = make_cfg("optimizer._target_=torch.optim.RMSprop", "~optimizer.dampening", "~optimizer.nesterov", "trainer.max_epochs=1")
    assert train(cfg, tmp_path).metrics["status"] == "ok"


def test_cross_entropy_infers_classes(tmp_path):
    cfg = make_cfg("data=inline", "loss=cross_entropy", "data.x=[[0.0],[1.0],[2.0],[3.0]]", "data.y=[[0],[1],[2],[1]]", "trainer.max_epochs=1")
    result = train(cfg, tmp_path)
    assert result.module.model.weight.shape == (3, 1)


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_speed_ups_keep_the_weights_bitwise(tmp_path, model):
    """Several steps per Lightning call, the hook-free step and adaptive inspection change no number."""

    def weights(folder, *overrides):
        result = train(make_cfg(f"model={model}", "trainer.max_epochs=3", *overrides), tmp_path / folder)
        return result.metrics["steps"], [p.detach().clone() for p in result.module.model.parameters()]

    reference = weights("slowest", "loop.steps_per_call=1", "log.inspect_every_n_steps=1")
    for folder, overrides in {
        "default": [],
        "k7": ["loop.steps_per_call=7"],
        "no_inspection": ["log.histograms=false", "log.inspect_every_n_steps=100000"],
        "k32_every3": ["loop.steps_per_call=32", "log.inspect_every_n_steps=3"],
    }.items():
        steps, params = weights(folder, *overrides)
        assert steps == reference[0] == 75  # 800 training rows / 32 = 25 steps an epoch
        assert all(torch.equal(a, b) for a, b in zip(params, reference[1])), folder


def test_auto_inspection_spaces_itself_within_budget(tmp_path):
    train(make_cfg("model=mlp", "trainer.max_epochs=40"), tmp_path)
    steps = [h.step for h in read_events(tmp_path).Histograms("grads/fc1.weight")]
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert steps[0] == 0 and len(steps) >= 3 and max(gaps) <= 1000
    assert max(gaps) > 1  # a tiny model is not inspected at every step


def test_metrics_json_holds_the_final_weights_validation_metrics(tmp_path):
    """What optimize.metric may name (val_acc): the final weights on the whole validation split,
    as counted by hand and as the last epoch's validation logged it."""
    cfg = make_cfg("model=mlp", "data=iris", "loss=cross_entropy", "trainer.max_epochs=3")
    result = train(cfg, tmp_path)
    module = result.module
    x, y = module.to_model(*prepare(cfg).splits.val)
    with torch.no_grad():
        by_hand = (module.model(x).argmax(dim=1) == y).double().mean().item()
    assert [k for k in result.metrics if k.startswith("val_")] == ["val_loss", "val_acc"]
    assert result.metrics["val_acc"] == pytest.approx(by_hand) and 0 < by_hand < 1
    assert read_events(tmp_path).Scalars("val_acc")[-1].value == pytest.approx(result.metrics["val_acc"])


def test_steps_per_call_must_divide_step_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.every_n_steps=10 must be a multiple of loop.steps_per_call=4"):
        train(make_cfg("loop.steps_per_call=4", "checkpoint.every_n_steps=10"), tmp_path)


@pytest.mark.slow
def test_torch_compile_option_trains_the_same_model(tmp_path):
    plain = train(make_cfg("model=mlp", "trainer.max_epochs=2"), tmp_path / "plain")
    compiled = train(make_cfg("model=mlp", "trainer.max_epochs=2", "loop.compile=true"), tmp_path / "compiled")
    names = [n for n, _ in compiled.module.model.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    for a, b in zip(plain.module.model.parameters(), compiled.module.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert {f"weights/{n}" for n in names} <= set(read_events(tmp_path / "compiled").Tags()["histograms"])


@pytest.mark.parametrize("precision", ["64", "bf16-mixed"])
def test_cpu_precisions_train(tmp_path, precision):
    result = train(make_cfg("model=mlp", f"device.precision={precision}", "trainer.max_epochs=5"), tmp_path)
    assert result.metrics["status"] == "ok" and result.metrics["val_loss"] < 0.1
    expected = torch.float64 if precision == "64" else torch.float32  # bf16-mixed keeps fp32 weights
    assert next(result.module.model.parameters()).dtype == expected


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mlp", "trainer.max_epochs=3", "data=iris", "loss=cross_entropy", "data.test_fraction=0.2", "optimizer=adam"],
        ["model=mlp", "trainer.max_epochs=3", "+trainer.accumulate_grad_batches=3", "+trainer.gradient_clip_val=0.5", "scheduler=step"],
        ["model=mlp", "trainer.max_epochs=2", "device.precision=64", "data.test_fraction=0.2", "optimizer.momentum=0.9"],
        # splits over 4,096 rows: Lightning's evaluation batches, its final metrics in one pass; bf16 autocast
        ["model=mlp", "data.n_samples=30000", "data.batch_size=512", "trainer.max_epochs=1", "data.test_fraction=0.2", "device.precision=bf16-mixed"],
    ],
    ids=["classifier_adam_test_split", "accumulated_clipped_scheduled", "float64_momentum", "large_splits_bf16"],
)
def test_a_solo_run_is_a_stack_of_one_bitwise_lightnings_path(tmp_path, overrides):
    """The one engine: a solo run trains as a stack of one (stack.alone), and every weight,
    optimizer state, metric and TensorBoard point is what Lightning's per-step path (engine.fit,
    the engine of every solo run before) gives the same config, to the bit."""
    from microtrain.engine.fit import train as lightnings_path
    from microtrain.stack.groups import why_alone

    overrides = [*overrides, "log.inspect_every_n_steps=5"]  # auto's grid widens with the clock
    cfg = make_cfg(*overrides)
    assert why_alone(cfg) is None  # it stacks: training.train takes it as a stack of one
    ours, theirs = train(cfg, tmp_path / "stack"), lightnings_path(make_cfg(*overrides), tmp_path / "lightning")
    assert ours.best_checkpoint is not None and theirs.best_checkpoint is not None
    mine, other = (torch.load(Path(r.best_checkpoint).parent / "last.ckpt", weights_only=True) for r in (ours, theirs))
    assert mine["state_dict"].keys() == other["state_dict"].keys()
    assert all(torch.equal(mine["state_dict"][k], other["state_dict"][k]) for k in mine["state_dict"])
    for slot, twin in zip(mine["optimizer_states"][0]["state"].values(), other["optimizer_states"][0]["state"].values()):
        assert slot.keys() == twin.keys() and all(torch.equal(slot[k], twin[k]) for k in slot if torch.is_tensor(slot[k]))
    timing = ("seconds", "threads", "test_checkpoint")
    assert {k: v for k, v in ours.metrics.items() if k not in timing} == {k: v for k, v in theirs.metrics.items() if k not in timing}
    events = [read_events(tmp_path / name) for name in ("stack", "lightning")]
    assert sorted(events[0].Tags()["scalars"]) == sorted(events[1].Tags()["scalars"])
    for tag in events[0].Tags()["scalars"]:
        if tag != "samples_per_s":  # a speed
            assert [(e.step, e.value) for e in events[0].Scalars(tag)] == [(e.step, e.value) for e in events[1].Scalars(tag)], tag


def test_time_running_out_before_an_epochs_first_step_adds_no_epoch(tmp_path, monkeypatch):
    """+trainer.max_time ending between an epoch's end and the next epoch's first step: the run
    ends at that epoch's end, as a solo run's did (no empty epoch validated, scheduled and
    checkpointed), and last.ckpt is of that end."""
    from microtrain.stack.train import StackedRun

    def out_of_time(self):  # runs out right after step 50, the end of the second 25-step epoch
        self.timed_out = self.timed_out or (self.step_count >= 50 and self.batches_done == 0)
        return self.timed_out

    monkeypatch.setattr(StackedRun, "_out_of_time", out_of_time)
    result = train(make_cfg("model=mlp", "trainer.max_epochs=10", "scheduler=step", "+trainer.max_time=00:01:00:00"), tmp_path)
    assert (result.metrics["steps"], result.metrics["epochs"]) == (50, 2)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["global_step"], saved["epoch"], saved["lr_schedulers"][0]["last_epoch"]) == (50, 1, 2)
    assert [e.step for e in read_events(tmp_path).Scalars("val_loss")] == [25, 50]
