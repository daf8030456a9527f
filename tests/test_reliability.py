"""Bad input, divergence and atomic files (kill and resume: test_resume.py)."""

import hashlib
import json
import os

import pytest
import torch

from microtrain.run.checkpoint_io import AtomicCheckpointIO
from tests_helpers import run_in_process

BAD_INPUTS = [
    (["model=cnn"], "model=cnn is not an option of model; choose one of: linear, mlp"),
    (["experiment=linear_1x1_sgd"], "experiment is a config group with no default choice, so a choice is added: write +experiment=linear_1x1_sgd"),
    (["loss=hinge"], "loss=hinge is not an option of loss; choose one of:"),
    (["optimizer=lbfgs2"], "optimizer=lbfgs2 is not an option of optimizer; choose one of: adagrad, adam, adamw, rmsprop, sgd, torch"),
    (["data=imagenet"], "data=imagenet is not an option of data; choose one of:"),
    (["device=tpu"], "device=tpu is not an option of device; choose one of: auto, cpu, cuda"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be greater than 0"),
    (["optimizer.lr=0"], "optimizer.lr=0 must be greater than 0"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not a number"),
    (["optimizer.lr=???"], "optimizer.lr is missing; add it to the optimizer config"),
    (["optimizer.lr=${oc.env:MICROTRAIN_NOT_SET}"], "optimizer.lr cannot be resolved: \"Environment variable 'MICROTRAIN_NOT_SET' not found\""),
    (["resume=${oc.env:MICROTRAIN_NOT_SET}"], "resume cannot be resolved: \"Environment variable 'MICROTRAIN_NOT_SET' not found\""),
    (["optimizer.momentum=-1"], "optimizer.momentum=-1 must be at least 0.0"),
    (["optimizer=adam", "optimizer.betas=[0.9,2.0]"], "optimizer.betas[1]=2.0 must be below 1"),
    (["optimizer._target_=torch.optim.Nope"], "cannot be built"),
    (["optimizer=torch", "optimizer.name=LBFGS"], "optimizer torch.optim.LBFGS needs a closure that evaluates the loss again within its step"),
    (["model=mlp", "model.hidden=0"], "model.hidden=0 must be at least 1"),
    (["model=mlp", "model.hidden=1.5"], "model.hidden=1.5 is not a whole number"),
    (["model=mlp", "model.activation=gelu"], "model.activation='gelu' is not one of"),
    (["model.init=he"], "model.init='he' is not one of"),
    (["model.bias=maybe"], "model.bias='maybe' must be true or false"),
    (["data.batch_size=0"], "data.batch_size=0 must be at least 1"),
    (["model.init_values={fc9.weight:[[1.0]]}"], "model.init_values names 'fc9.weight', which this model does not have"),
    (["model.init_values={weight:[[1.0]]}"], "model.init_values.weight has shape [1, 1] but the parameter has shape [1, 3]"),
    (["model=mlp", "model.init_values=[[1.0]]"], "model.init_values maps parameter names to values, like {fc1.weight: [...]}"),
    (["model.in_features=4"], "model.in_features=4 but the data has 3 features; drop model.in_features"),
    (["data=inline", "data.y=[[1.0],[2.0]]"], "data.x has 4 rows but data.y has 2"),
    (["data=inline", "data.x=[[1.0],[2.0,3.0],[3.0],[4.0]]"], "data.x has rows of different lengths"),
    (["data=inline", "data.x=[[1.0],[a],[3.0],[4.0]]"], "data.x holds a value that is not a number"),
    (["loss=cross_entropy"], "loss=cross_entropy needs integer class labels"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0 must be in [0, 1)"),
    (["data.n_samples=-5"], "data.n_samples=-5 must be at least 2"),
    (["data.noise=-1"], "data.noise=-1 must be at least 0.0"),
    (["device=cuda"], "device=cuda but no CUDA GPU is visible; use device=cpu or device=auto"),
    (["device.precision=8"], "device.precision='8' is not one of"),
    (["device=cpu", "device.precision=16-mixed"], "16-mixed needs a CUDA GPU; on CPU use bf16-mixed or 32"),
    (["seed=1.5"], "seed=1.5 is not a whole number"),
    (["seed=abc"], "seed='abc' is not a whole number"),
    (["trainer.strategy=warp"], "Lightning refused the trainer settings"),
    (["log.every_n_steps=0"], "log.every_n_steps=0 must be at least 1"),
    (["resume=true"], "resume=true but"),
    # every key is checked by the schema (config.schema), before anything starts
    (["+trainer.bogus_flag=1"], "trainer.bogus_flag is not an argument of lightning.Trainer"),
    (["+trainer.logger=false"], "trainer.logger is set by microtrain"),
    (["data.batch_size=abc"], "data.batch_size='abc' is not a whole number"),
    (["log.histograms=maybe"], "log.histograms='maybe' must be true or false"),
    (["log.every_n_steps=abc"], "log.every_n_steps='abc' is not a whole number"),
    (["log.inspect_every_n_steps=often"], "log.inspect_every_n_steps='often' is not a whole number or auto"),
    (["trainer.max_epochs=many"], "trainer.max_epochs='many' is not a whole number"),
    (["model.bias=perhaps"], "model.bias='perhaps' must be true or false"),
    (["+log.histogram=false"], "log.histogram is not a key of log"),
    (["+optimizer.lr=0.1"], "optimizer.lr is set already: change it without +, as optimizer.lr=0.1"),
    (["+trainer.gradient_clip_algorithm=sideways"], "trainer.gradient_clip_algorithm='sideways' is not one of: norm, value"),
    (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 must be at least 1"),
    (["+trainer.compile=true"], "trainer.compile is not an argument of lightning.Trainer"),
    (["loop.steps_per_call=0"], "loop.steps_per_call=0 must be at least 1"),
    (["checkpoint.budget=-1"], "checkpoint.budget=-1 must be at least 0.0"),
    (["seed=-1"], "seed=-1 must be at least 0"),
    (["callbacks=early_stopping", "data.val_fraction=0"], "callbacks.early_stopping monitors val_loss but the run has no validation split"),
    (["callbacks=early_stopping", "callbacks.early_stopping.mode=sideways"], "callbacks.early_stopping.mode='sideways' is not one of: min, max"),
    (["callbacks=early_stopping", "callbacks.early_stopping.patience=abc"], "callbacks.early_stopping.patience='abc' is not a whole number"),
    (
        ["callbacks=early_stopping", "callbacks.early_stopping.monitor=val_acc"],
        "callbacks.early_stopping.monitor=val_acc is not logged by this run; pick one of: val_loss",
    ),
    (["scheduler=step", "+scheduler.bogus=1"], "scheduler torch.optim.lr_scheduler.StepLR refused its settings"),
    (["+trainer.val_check_interval=100000"], "trainer.val_check_interval counts Lightning calls of several steps here"),
    (["+trainer.limit_train_batches=1"], "trainer.limit_train_batches counts Lightning calls"),
    # values lightning.Trainer takes without a word and fails on once training has started
    (["+trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 must be a whole number of epochs, 1 or more"),
    (["+trainer.fast_dev_run=true"], "trainer.fast_dev_run is not supported"),
    (["+trainer.max_time=-1"], "trainer.max_time=-1 is not a duration; write DD:HH:MM:SS"),
    (["loop.compile=maybe"], "loop.compile='maybe' must be true or false or auto"),
    (["device.threads=0"], "device.threads=0 must be at least 1"),
    (["optimizer=torch", "+optimizer.dampening=0.1"], "optimizer torch.optim.RMSprop refused its settings"),
    (["optimizer=torch", "optimizer.name=Nope"], "cannot be built"),
    (["data=csv", "data.missing=guess"], "data.missing='guess' is not one of: error, drop, mean"),
    (["data=csv", "data.categorical=some"], "data.categorical='some' must be auto or none or a list of columns"),
    # typos and what Hydra cannot compose: one line naming the closest key or option
    (["optimizer.lrr=0.1"], "optimizer.lrr is not a key of the config (did you mean optimizer.lr?); to add a new key write +optimizer.lrr=0.1"),
    (["optimizer=adamax"], "optimizer=adamax is not an option of optimizer (for torch.optim.Adamax: optimizer=torch optimizer.name=Adamax)"),
    (["data.batchsize=3"], "data.batchsize is not a key of the config (did you mean data.batch_size?)"),
    (["trainer.max_epoch=3"], "trainer.max_epoch is not a key of the config (did you mean trainer.max_epochs?)"),
    (["model.hiden=3"], "model.hiden is not a key of the config (did you mean model.hidden, a key of model=mlp?)"),
    (["model.activation=tanh"], "model.activation is a key of model=mlp, not of this run's model: add model=mlp"),
    (["optimizer.betas=[0.9,0.99]"], "optimizer.betas is a key of optimizer=adam and optimizer=adamw, not of this run's optimizer"),
    (
        ["optimizer=torch", "optimizer.name=Adamax", "optimizer.weight_decay=0.1"],
        "optimizer.weight_decay is not a key of optimizer=torch, which hands the class what is added with +: write +optimizer.weight_decay=0.1",
    ),
    (["modell=mlp"], "modell is not a key of the config (did you mean model?)"),
    (["~optimizer.lrr"], "~optimizer.lrr: optimizer.lrr is not a key of the config (did you mean optimizer.lr?)"),
    (["+model=mlp"], "model is a config group: choose its option with model=mlp, without +"),
    (["optimizer.lr=0.1,0.2"], "optimizer.lr=0.1,0.2 lists several values: that is a sweep, so add -m"),
    (["optimizer.lr=[1,2"], "an override cannot be read (no viable alternative at input '[1,2')"),
    (["data.path=/tmp/dätä.csv"], "Hydra reads only ASCII letters unquoted; quote the value: 'data.path=\"/tmp/dätä.csv\"'"),
    (
        ["+optimizer.lrr=0.1"],
        "optimizer torch.optim.SGD refused its settings: SGD.__init__() got an unexpected keyword argument 'lrr'; did you mean optimizer.lr?",
    ),
    (["hydra/launcher=nope"], "hydra/launcher=nope is not an option of hydra/launcher; choose one of: basic, joblib, stacked, stacked_slurm"),
    # non-finite numbers and sizes that cannot train, refused before training
    (["data=inline", "data.y=[[1.0],[inf],[3.0],[4.0]]"], "data.y row 2, column 1 (counting from 1) is inf: training needs finite numbers"),
    (["data=inline", "data.x=[[1.0],[nan],[3.0],[4.0]]"], "data.x row 2, column 1 (counting from 1) is nan"),
    (["model.init_values={weight:[[1.0,nan,2.0]]}"], "model.init_values.weight at index [0, 1] (counting from 0) is nan"),
    (["model=mlp", "model.hidden=1000000000"], "this model has 5,000,000,001 parameters and training it needs about"),
    # keys that decide what else is checked, and callbacks checked before they are built
    (["overwrite=maybe"], "overwrite='maybe' must be true or false"),
    (["resume=maybe"], "resume='maybe' must be true or false"),
    (["trust_run_config=maybe"], "trust_run_config='maybe' must be true or false"),
    (["overwrite=true", "resume=true", "hydra.run.dir={tmp}/earlier"], "resume=true continues the run in the folder and overwrite=true"),
    (
        ["+callbacks.pwn._target_=shutil.rmtree", "+callbacks.pwn.path={tmp}/earlier"],
        "callbacks.pwn._target_=shutil.rmtree is not a Lightning callback class",
    ),
    (
        ["callbacks=early_stopping", "+callbacks.early_stopping.bogus=1"],
        "callbacks.early_stopping cannot be built: TypeError: EarlyStopping.__init__() got an unexpected keyword argument 'bogus'",
    ),
    (["optimize.metric=val_nonsense"], "optimize.metric=val_nonsense is not reported by this run; pick one of: auto, train_loss, val_loss"),
    # run folders that cannot be written or resumed
    (["hydra.run.dir={tmp}/earlier/metrics.json"], "metrics.json: File exists; it is a file, not a folder"),
    (["hydra.run.dir={tmp}/earlier/metrics.json/run"], "Not a directory; a file stands where a folder is needed"),
    (["resume=true", "hydra.run.dir={tmp}/nothing"], "resume=true but"),
    (["data=csv", "data.path={tmp}/missing.csv", "data.target=y"], "missing.csv: no such file; check data.path"),
    (["data=npz", "data.path={tmp}/nope.npz"], "nope.npz: no such file; check data.path"),
    # values out of range
    (["+trainer.max_time=abc"], "trainer.max_time='abc' is not a duration; write DD:HH:MM:SS"),
    (["log.every_n_steps=0"], "log.every_n_steps=0 must be at least 1"),
    (["log.inspect_every_n_steps=0"], "log.inspect_every_n_steps=0 must be at least 1"),
    (["log.inspect_budget=-1"], "log.inspect_budget=-1 must be greater than 0"),
    (["log.histograms=maybe"], "log.histograms='maybe' must be true or false"),
    (["data.val_fraction=-0.1"], "data.val_fraction=-0.1 must be in [0, 1); use 0 for none"),
    (["data.test_fraction=1"], "data.test_fraction=1 must be in [0, 1); use 0 for none"),
    (["data.split_seed=-1"], "data.split_seed=-1 must be at least 0"),
    (["data.n_samples=0"], "data.n_samples=0 must be at least 2"),
    (["data.n_features=0"], "data.n_features=0 must be at least 1"),
    (["data.noise=-1"], "data.noise=-1 must be at least 0.0"),
    (["model.init_gain=-1"], "model.init_gain=-1 must be greater than 0"),
    (["loss=huber", "loss.delta=-1"], "loss.delta=-1 must be greater than 0"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 must be at least 1"),
    (["scheduler=plateau", "scheduler.factor=1"], "scheduler.factor=1 must be below 1"),
    (["scheduler=plateau", "data.val_fraction=0"], "steps on val_loss, and this run has no validation split; set data.val_fraction above 0"),
    (["trainer.devices=0"], "Lightning refused the trainer settings: `Trainer(devices=0)`"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0 must be at least 1"),
    (["trainer.strategy=bogus"], "Lightning refused the trainer settings: You selected an invalid strategy name"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5 must be at least -1"),
    (["checkpoint.every_n_steps=0"], "checkpoint.every_n_steps=0 must be at least 1"),
    (["seed=abc"], "seed='abc' is not a whole number"),
    (["device.threads=abc"], "device.threads='abc' is not a whole number or auto"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 must be at least 0.0"),
    (["optimizer.nesterov=true"], "optimizer torch.optim.SGD refused its settings: Nesterov momentum requires a momentum and zero dampening"),
    (["optimizer=adam", "optimizer.eps=-1"], "optimizer.eps=-1 must be greater than 0"),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas=[0.9] must be a list of two values"),
    (["loss=cross_entropy"], "loss=cross_entropy needs integer class labels 0, 1, 2, ... but row 0 (counting from 0) holds"),
    (["log.inspect=false", "log.curvature=true"], "log.curvature=true is computed at inspections: it needs log.inspect=true (the default)"),
]


@pytest.fixture
def earlier_run(tmp_path):
    """A finished run folder whose files must survive every bad command."""
    folder = tmp_path / "earlier"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"status": "ok", "train_loss": 0.01}\n')
    return folder


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_touches_nothing(capsys, tmp_path, earlier_run, args, message):
    """The fault table: one error line, a non-zero exit, no traceback, every file of an earlier
    run byte-identical, and no folder made for the refused run."""
    before = digest(earlier_run)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    short = [] if any(a.startswith("trainer.max_epochs") for a in args) else ["trainer.max_epochs=1"]
    folder = [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={tmp_path / 'new'}"]
    code, out, err = run_in_process(capsys, "train.py", *args, *folder, *short)
    assert code != 0
    assert "Traceback" not in err + out
    assert message in err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ")
    assert digest(earlier_run) == before
    assert not (tmp_path / "new").exists()  # a run refused before it trained leaves no folder


def test_bad_rerun_into_a_finished_folder_keeps_its_results(capsys, earlier_run):
    before = (earlier_run / "metrics.json").read_text()
    code, _, err = run_in_process(capsys, "train.py", "optimizer.lr=-1", f"hydra.run.dir={earlier_run}")
    assert code == 2 and (earlier_run / "metrics.json").read_text() == before


LATE_REFUSALS = [  # refused only once the run is built (its data, model, optimizer, Trainer), after the schema's checks
    (["model.in_features=2"], "model.in_features=2 but the data has 3 features"),
    (["optimizer=torch", "optimizer.name=Nope"], "optimizer._target_='torch.optim.Nope' cannot be built"),
    (["optimizer=torch", "optimizer.name=adam"], "torch.optim has no optimizer class adam (did you mean Adam?); it has ASGD, Adadelta"),
    (["optimizer=adam", "+optimizer.capturable=true", "device=cpu"], "cannot take a step with these settings: If capturable=True"),  # a GPU's
    (
        ["scheduler=step", "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", "~scheduler.step_size", "~scheduler.gamma"]
        + ["+scheduler.max_lr=0.1", "+scheduler.total_steps=2", "trainer.max_epochs=4"],
        "scheduler OneCycleLR takes 2 steps, one an epoch here, but trainer.max_epochs=4: set +scheduler.total_steps=4",  # failed in fit
    ),
    (["optimizer=torch", "optimizer.name=SparseAdam"], "optimizer torch.optim.SparseAdam cannot take a step with these settings"),  # failed in fit
    (["+trainer.max_time=abc"], "trainer.max_time='abc' is not a duration"),
    (["+trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 must be a whole number"),  # crashed in fit, the earlier run deleted
    (["callbacks=early_stopping", "data.val_fraction=0"], "monitors val_loss but the run has no validation split"),
    (["data=csv", "data.path=/nonexistent/x.csv"], "no such file; check data.path"),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished run (2 epochs of the default), made once: each test works on a copy."""
    from tests_helpers import run_script

    folder = tmp_path_factory.mktemp("trained") / "run"
    done = run_script("train.py", f"hydra.run.dir={folder}", "trainer.max_epochs=2", cwd=folder.parent)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.parametrize("args, message", LATE_REFUSALS, ids=[" ".join(a) for a, _ in LATE_REFUSALS])
def test_overwrite_refused_once_built_keeps_the_earlier_run(capsys, tmp_path, trained_run, args, message):
    """overwrite=true removes the earlier run's files only once the new run is built: a mistake
    found then (not by the schema) leaves every file byte-identical (it deleted them all)."""
    import shutil

    from tests_helpers import files_of

    run = shutil.copytree(trained_run, tmp_path / "run")
    before = files_of(run)
    code, out, err = run_in_process(capsys, "train.py", f"hydra.run.dir={run}", "overwrite=true", *args)
    assert code == 2 and message in err and "Traceback" not in err + out
    assert files_of(run) == before


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (RuntimeError("a bug"), 2, "RuntimeError: a bug (unexpected: {run} keeps its earlier run)"),
        (KeyboardInterrupt(), 130, "interrupted by SIGINT; {run} keeps its earlier run"),
    ],
)
def test_overwrite_stopped_before_the_run_is_built_keeps_the_earlier_run(capsys, tmp_path, trained_run, monkeypatch, raised, code, line):
    """A bug or Ctrl-C while the new run is being built: the earlier run is not replaced yet, so
    nothing of it is touched (no failed or interrupted metrics.json, no traceback in its train.log)."""
    import shutil

    from tests_helpers import files_of

    def broken(*args, **kwargs):
        raise raised

    monkeypatch.setattr("microtrain.stack.jobs.prepare", broken)
    run = shutil.copytree(trained_run, tmp_path / "run")
    before = files_of(run)
    got, out, err = run_in_process(capsys, "train.py", f"hydra.run.dir={run}", "overwrite=true")
    assert got == code and err.strip() == "error: " + line.format(run=run) and "Traceback" not in err + out
    assert files_of(run) == before


@pytest.mark.parametrize("value", ["trainer.max_epochs=abc", "trainer.max_steps=abc", "trainer.max_epochs=1.5"])
def test_resume_with_a_run_length_that_is_not_a_number_is_one_line(capsys, tmp_path, trained_run, value):
    """The schema's line, before the resume's own checks read the value (a TypeError traceback
    that rewrote metrics.json as failed)."""
    import shutil

    from tests_helpers import files_of

    run = shutil.copytree(trained_run, tmp_path / "run")
    before = files_of(run)
    code, out, err = run_in_process(capsys, "train.py", f"hydra.run.dir={run}", "resume=true", value)
    assert code == 2 and "is not a whole number" in err and "Traceback" not in err + out
    assert files_of(run) == before


def test_overwrite_removes_the_earlier_runs_step_json(capsys, tmp_path, trained_run):
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run")
    (run / "step.json").write_text("{}")  # explain_step.py's, of the earlier run's model
    code, _, err = run_in_process(capsys, "train.py", f"hydra.run.dir={run}", "overwrite=true", "trainer.max_epochs=1", "log.inspect=false")
    assert code == 0, err
    assert not (run / "step.json").exists() and json.loads((run / "metrics.json").read_text())["steps"] == 25


def test_divergence_stops_with_one_line_and_keeps_a_good_checkpoint(capsys, tmp_path):
    code, out, err = run_in_process(capsys, "train.py", "optimizer.lr=1.2", f"hydra.run.dir={tmp_path}", "trainer.enable_progress_bar=false")
    assert code == 3
    (line,) = err.strip().splitlines()
    assert line.startswith("error: training diverged at step ") and "lower optimizer.lr" in line
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_divergence_names_the_first_non_finite_gradient(tmp_path):
    from microtrain.errors import TrainingDiverged
    from microtrain.training import train
    from tests_helpers import make_cfg

    # finite initial weights (NaN ones are refused before training) whose first forward overflows:
    # inspection counts the non-finite gradients of step 0, first in parameter order
    with pytest.raises(TrainingDiverged, match=r"step 1: loss=inf \(first non-finite gradient: fc1.weight at step 0 \(8 NaN, 4 Inf\)\)"):
        train(make_cfg("model=mlp", "model.init_values={fc2.weight:[[3e38,3e38,3e38,3e38]]}", "model.hidden=4", "log.every_n_steps=1"), tmp_path)


def test_histograms_of_weights_near_the_float32_limit_are_drawn():
    """A diverging job's weights may be finite yet ±3e38: their span overflows float32, which made
    every bin position NaN and failed a 64-job stacked sweep whose largest learning rates diverged."""
    from microtrain.monitor.statistics import HISTOGRAM_BINS, histograms

    rows = histograms(torch.tensor([[3e38, -3e38, 1.0, float("nan")], [1.0, 2.0, 3.0, 4.0]]))
    assert rows[:, 5:].sum(dim=1).tolist() == [3.0, 4.0]  # every finite value in a bin, NaN left out
    assert rows[0, 5].item() == 1 and rows[0, 5 + HISTOGRAM_BINS - 1].item() == 1  # the extremes at the ends


def test_finished_run_records_ok(capsys, tmp_path):
    code, *_ = run_in_process(capsys, "train.py", f"hydra.run.dir={tmp_path}", "trainer.max_epochs=1")
    assert code == 0 and json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)

    def crash(obj, target, *a, **k):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(2))


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_without_running_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_a_search_with_an_unknown_optimize_mode_is_one_line_before_it_starts(capsys, tmp_path):
    """Optuna's direction comes from optimize.mode (conf/hparams_search/optuna.yaml): a mode that is
    neither min nor max stops the search before its first trial, with no sweep folder."""
    sweep = tmp_path / "sweep"
    code, out, err = run_in_process(capsys, "train.py", "-m", "hparams_search=optuna", "optimize.mode=maximum", f"hydra.sweep.dir={sweep}")
    assert code == 2 and err.strip() == "error: optimize.mode=maximum must be min or max"
    assert not sweep.exists()


@pytest.mark.parametrize(
    "args, line",
    [
        (["data.path=rows.csv"], "error: run is missing: name a finished run folder, e.g. run=outputs/2026-11-22/02-28-41"),
        (["run=."], "error: data.path is missing: name a CSV or .npz, e.g. data.path=new.csv"),
        (["run=no_such_run", "data.path=rows.csv"], "error: run=no_such_run is not a folder; point run= at a finished run folder"),
    ],
)
def test_predict_without_its_run_or_data_is_one_line(capsys, tmp_path, args, line):
    code, _, err = run_in_process(capsys, "predict.py", *args, cwd=tmp_path)
    assert code == 2 and err.strip() == line, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "script, args, key",
    [
        ("explain_step.py", ["model=mlp", "optimizer.lr=${oc.env:MICROTRAIN_NOT_SET}"], "optimizer.lr"),
        ("predict.py", ["run=${oc.env:MICROTRAIN_NOT_SET}", "data.path=rows.csv"], "run"),
        ("predict.py", ["run=.", "data.path=rows.csv", "data.missing=${oc.env:MICROTRAIN_NOT_SET}"], "data.missing"),
    ],
)
def test_a_value_that_does_not_resolve_is_one_line_in_every_command(capsys, tmp_path, script, args, key):
    code, _, err = run_in_process(capsys, script, *args, cwd=tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {key} cannot be resolved: \"Environment variable 'MICROTRAIN_NOT_SET' not found\"")


def test_a_number_from_the_environment_as_text_says_how_to_make_it_a_number(capsys, tmp_path, monkeypatch):
    """${oc.env:...} gives text: the one line says so and how to decode it, and that way trains."""
    monkeypatch.setenv("MICROTRAIN_TEST_LR", "0.03")
    code, _, err = run_in_process(capsys, "train.py", "optimizer.lr=${oc.env:MICROTRAIN_TEST_LR}", f"hydra.run.dir={tmp_path / 'text'}")
    assert code == 2 and err.strip() == (
        "error: optimizer.lr='0.03' is not a number; set it like optimizer.lr=0.1 (this is text, as ${oc.env:...} gives; "
        "for a number from the environment: optimizer.lr=\"'${oc.decode:${oc.env:NAME}}'\")"
    )
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "optimizer.lr='${oc.decode:${oc.env:MICROTRAIN_TEST_LR}}'",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'decoded'}",
    )
    assert code == 0 and "lr=0.03" in out, err


def test_a_damaged_metrics_json_is_one_line_for_predict_resume_and_python(capsys, tmp_path, trained_run):
    """metrics.json cut short (a full disk, an edit by hand): predict and resume name the file and
    what to do, and touch nothing (they raised JSONDecodeError, resume after rewriting the file)."""
    import shutil

    import microtrain as mt
    from tests_helpers import files_of

    run = shutil.copytree(trained_run, tmp_path / "run")
    (run / "metrics.json").write_text('{"status": "ok", "train_loss": \n')
    (tmp_path / "new.csv").write_text("x0,x1,x2\n0.1,0.2,0.3\n")
    before = files_of(run)
    damaged = f"{run / 'metrics.json'} cannot be read (not JSON: "
    code, out, err = run_in_process(capsys, "predict.py", f"run={run}", f"data.path={tmp_path / 'new.csv'}", f"output={tmp_path / 'p.csv'}")
    assert code == 2 and err.startswith(f"error: {damaged}") and "allow_status=[unfinished]" in err and "Traceback" not in out + err
    code, out, err = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={run}", "trainer.max_epochs=3")
    assert code == 2 and err.startswith(f"error: {damaged}") and "delete it, and resume=true goes on from checkpoints/last.ckpt" in err
    with pytest.raises(mt.ConfigError, match="cannot be read"):
        mt.load(run).metrics
    assert files_of(run) == before


def test_a_folder_given_without_a_key_says_which_key_takes_it(capsys, tmp_path):
    """predict.py <folder> said to close brackets and quote values."""
    code, _, err = run_in_process(capsys, "predict.py", str(tmp_path))
    assert code == 2 and err.strip().startswith(
        f"error: {tmp_path} is a folder, not a setting (key=value): a run's folder is run={tmp_path} for predict.py"
    )
