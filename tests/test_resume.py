"""Reliability: resume from the run folder alone, nothing written by a rejected run, one run
per folder, damaged checkpoints, signals that end runs and sweeps with a status, sweeps that
resume, and predict.py that refuses unfinished runs."""

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests_helpers import checkpoint_weights, ROOT, files_of, run_in_process

QUICK = ["model=mlp", "model.hidden=8", "trainer.enable_progress_bar=false"]


def bitwise(a: Path, b: Path) -> bool:
    wa, wb = checkpoint_weights(a), checkpoint_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *QUICK, "trainer.max_epochs=3", f"hydra.run.dir={folder}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.parametrize(
    "override, named",
    [
        ("seed=3", "seed (0 in the run, 3 given)"),
        ("optimizer=adam", "optimizer (SGD in the run, Adam given)"),
        ("data.batch_size=8", "data.batch_size (32 in the run, 8 given)"),
        ("model.activation=tanh", "model.activation ('relu' in the run, 'tanh' given)"),
        ("loss=l1", "loss (mse in the run, l1 given)"),
        ("device=cuda", "device.type ('auto' in the run, 'cuda' given)"),  # a group without a name: the keys it changes
        ("callbacks=early_stopping", "callbacks.early_stopping (None in the run, EarlyStopping given)"),
    ],
)
def test_a_conflicting_override_on_resume_is_refused_and_writes_nothing(capsys, finished, override, named):
    before = files_of(finished)
    code, out, err = run_in_process(capsys, "train.py", "model=mlp", "resume=true", f"hydra.run.dir={finished}", override)
    assert code == 2 and named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert files_of(finished) == before


@pytest.mark.parametrize("override, reached", [("trainer.max_epochs=2", "the 3 epochs"), ("trainer.max_steps=10", "the 75 steps")])
def test_a_run_length_below_what_the_run_reached_is_refused_and_writes_nothing(capsys, finished, override, reached):
    """Lightning would refuse the lower max_epochs only after config.yaml, metrics.json and the
    events were rewritten (and every later resume=true with it), and end past a lower max_steps."""
    before = files_of(finished)
    code, out, err = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={finished}", override)
    assert code == 2 and f"error: {override} is below {reached} this run has reached (step 75, epoch 3)" in err
    assert len(err.strip().splitlines()) == 1 and files_of(finished) == before


def test_a_key_of_the_runs_model_on_resume_is_refused_as_a_change(capsys, finished):
    """resume=true composes on the default model (linear), not the run's (an MLP): model.hidden is
    refused as what resume cannot change, not as a key of another model; restating model=mlp is no change."""
    code, _, err = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={finished}", "model.hidden=16")
    assert code == 2 and err.strip() == (
        "error: resume=true keeps the run's model settings (its config.yaml): drop model.hidden to resume, or start a new run in another hydra.run.dir"
    )
    code, _, err = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={finished}", "model=mlp", "model.hidden=16")
    assert code == 2 and "cannot change model.hidden (8 in the run, 16 given) in mid-run" in err and "model (" not in err


def test_a_resume_says_where_it_goes_on_from_and_counts_the_epoch_it_is_in(capsys, tmp_path):
    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", *QUICK, "trainer.max_steps=40", f"hydra.run.dir={run}")[0] == 0  # 25 steps an epoch: in epoch 2
    code, _, err = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={run}", "trainer.max_steps=-1", "trainer.max_epochs=1")
    assert code == 2 and "trainer.max_epochs=1 is below the 2 epochs this run has reached (step 40, epoch 2)" in err
    code, out, _ = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={run}", "trainer.max_steps=60")
    assert code == 0 and f"resume: from step 40 (epoch 2) of {run}" in out
    assert json.loads((run / "metrics.json").read_text())["steps"] == 60


def test_a_rejected_rerun_into_a_finished_folder_writes_nothing(capsys, finished):
    before = files_of(finished)
    code, _, err = run_in_process(capsys, "train.py", "optimizer=adam", "optimizer.betas=[2,0.9]", f"hydra.run.dir={finished}")
    assert code == 2 and "optimizer.betas[0]=2" in err
    assert files_of(finished) == before


def test_resume_needs_no_other_override_and_applies_a_new_lr(capsys, tmp_path):
    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", *QUICK, "trainer.max_epochs=2", f"hydra.run.dir={run}")[0] == 0
    code, out, _ = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={run}", "trainer.max_epochs=4", "optimizer.lr=0.01")
    assert code == 0 and "resume: optimizer.lr: 0.05 -> 0.01" in out
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 3 and saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01
    (entry,) = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert entry["resumed_at_step"] == 50 and entry["changed"] == ["trainer.max_epochs: 2 -> 4", "optimizer.lr: 0.05 -> 0.01"]
    assert "model" in (run / "config.yaml").read_text() and "hidden: 8" in (run / "config.yaml").read_text()


def test_a_resume_and_predict_use_the_values_the_run_trained_with_not_its_interpolations(capsys, tmp_path, monkeypatch):
    """config.yaml holds values, not ${...}: a resume in a shell whose environment changed, or
    with a new lr that another key referred to, trains on the model and settings it started with."""
    run = tmp_path / "run"
    monkeypatch.setenv("MICROTRAIN_TEST_ACTIVATION", "tanh")
    started = ("model.activation=${oc.env:MICROTRAIN_TEST_ACTIVATION}", "optimizer.weight_decay=${optimizer.lr}")
    assert run_in_process(capsys, "train.py", *QUICK, *started, "trainer.max_epochs=1", f"hydra.run.dir={run}")[0] == 0
    saved = (run / "config.yaml").read_text()
    assert "activation: tanh" in saved and "weight_decay: 0.05" in saved and "${" not in saved
    monkeypatch.setenv("MICROTRAIN_TEST_ACTIVATION", "relu")
    code, out, _ = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={run}", "trainer.max_epochs=2", "optimizer.lr=0.01")
    assert code == 0 and "activation=tanh" in out and "resume: optimizer.lr: 0.05 -> 0.01" in out
    groups = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"]
    assert groups[0]["weight_decay"] == 0.05  # as it started: the reference was resolved when the run began
    monkeypatch.delenv("MICROTRAIN_TEST_ACTIVATION")
    rows = tmp_path / "rows.csv"
    rows.write_text("x0,x1,x2\n0.1,0.2,0.3\n")
    assert run_in_process(capsys, "predict.py", f"run={run}", f"data.path={rows}")[0] == 0


def test_an_escaped_interpolation_stays_text(capsys, tmp_path):
    """data.path='\\${x}.csv' names a file called ${x}.csv: resolving the config keeps it text."""
    table = tmp_path / "${x}.csv"
    table.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{2 * i}\n" for i in range(20)))
    run = tmp_path / "run"
    code, _, err = run_in_process(capsys, "train.py", "data=csv", f"data.path={tmp_path}/\\${{x}}.csv", "data.target=y", f"hydra.run.dir={run}")
    assert code == 0, err
    assert f"path: {tmp_path}/\\${{x}}.csv" in (run / "config.yaml").read_text()
    sweep = tmp_path / "sweep"  # and as stacked jobs
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "-m",
        "hydra/launcher=stacked",
        "data=csv",
        f"data.path={tmp_path}/\\${{x}}.csv",
        "data.target=y",
        "optimizer.lr=0.01,0.02",
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 0 and "stacked: 2 of 2 jobs in 1 group(s)" in out, err
    assert all(f"path: {tmp_path}/\\${{x}}.csv" in f.read_text() for f in sweep.glob("*/config.yaml"))


def test_a_second_run_into_a_busy_folder_is_refused(capsys, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "a+") as held:  # what a run still going holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_in_process(capsys, "train.py", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}")
    assert code == 2 and "is in use by a run still going" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


@pytest.mark.parametrize("extra", [[], ["resume=true"], ["overwrite=true"]])
def test_a_folder_a_run_is_still_writing_is_called_busy_first(capsys, tmp_path, extra):
    """The run going there has written config.yaml and a checkpoint but no metrics.json yet: the
    line says it is in use (it said "a run that never finished; resume=true continues it", or
    announced "resume: from step ..." before the refusal), and nothing is touched."""
    from tests_helpers import files_of

    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", *QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run}")[0] == 0
    (run / "metrics.json").unlink()  # as while it trains
    before = files_of(run)
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        code, out, err = run_in_process(capsys, "train.py", *QUICK, "trainer.max_epochs=2", f"hydra.run.dir={run}", *extra)
    assert code == 2 and err.strip() == f"error: {run} is in use by a run still going (pid 4242); wait for it to end or choose another hydra.run.dir"
    assert "resume:" not in out
    assert {k: v for k, v in files_of(run).items() if k != ".lock"} == before


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_checkpoint_is_one_line_naming_the_good_one(capsys, tmp_path, damage):
    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", *QUICK, "trainer.max_epochs=2", f"hydra.run.dir={run}")[0] == 0
    last = run / "checkpoints" / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    else:  # the file loads, but a weight changed: only the checksum sees it
        saved = torch.load(last, weights_only=True)
        saved["state_dict"]["model.fc1.weight"][0, 0] += 1
        torch.save(saved, last)
    before = files_of(run)
    code, _, err = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={run}")
    assert code == 2 and f"{last} is damaged" in err and "best.ckpt" in err and "Traceback" not in err
    assert ("does not load" if damage == "truncated" else "checksum") in err
    assert files_of(run) == before


def _train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _kill_frozen_when(process: subprocess.Popen, last: Path, wanted, seconds: float = 120) -> int:
    """SIGSTOP the run each time last.ckpt changes, read its step, SIGKILL it (still frozen, so
    nothing more is written) when wanted(step); the step it was killed at."""
    deadline, seen = time.time() + seconds, None
    while time.time() < deadline:
        assert process.poll() is None, "the run finished before it could be killed"
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp is not None and stamp != seen:
            process.send_signal(signal.SIGSTOP)
            step = torch.load(last, weights_only=True)["global_step"]  # written whole: tmp + rename
            if wanted(step):
                process.kill()
                return step
            seen = stamp
            process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"{last} never held the checkpoint wanted")


def job(sweep: Path, lr: str) -> Path:
    """The sweep's job folder of this learning rate (Hydra names it by all its overrides)."""
    deadline = time.time() + 120
    while not (found := [p for p in sweep.glob(f"*optimizer.lr={lr},*")]):
        assert time.time() < deadline, f"no job folder for lr {lr} in {sweep}"
        time.sleep(0.05)
    return found[0]


# One kill-and-resume matrix: how the run is stopped, and where its last.ckpt was written.
# 9,600 training rows in batches of 32 make 300-step epochs: the first step checkpoint (150) lies
# mid-epoch. Lightning calls of 50 steps keep every grid (losses, inspection) on the same steps
# whichever call boundary a run resumes from.
STOPPED = [*QUICK, "data.n_samples=12000", "trainer.max_epochs=10", "loop.steps_per_call=50", "log.every_n_steps=100", "log.inspect_every_n_steps=50"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = _train(*STOPPED, f"hydra.run.dir={folder}")
    assert done.wait(timeout=300) == 0, done.stderr.read()
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, every_n_steps",
    [(signal.SIGKILL, None), (signal.SIGKILL, 150), (signal.SIGTERM, None), (signal.SIGINT, None)],
    ids=["SIGKILL-epoch-end", "SIGKILL-mid-epoch", "SIGTERM", "SIGINT"],
)
def test_a_run_stopped_by_a_signal_resumes_bitwise_from_its_folder_alone(tmp_path, uninterrupted, how, every_n_steps):
    """SIGKILL after the first checkpoint (an epoch's end, or a step checkpoint mid-epoch), or
    SIGTERM or SIGINT (a status, last.ckpt at the next step boundary, the command that resumes):
    resume=true ends bitwise equal to the uninterrupted run, its curves without a gap or a double."""
    extra = [f"checkpoint.every_n_steps={every_n_steps}"] if every_n_steps else []
    run = tmp_path / "run"
    process = _train(*STOPPED, *extra, f"hydra.run.dir={run}")
    if how == signal.SIGKILL:
        # A fast machine runs 150 steps between two polls: freeze the run to read which
        # checkpoint it wrote last, and kill it only on the kind this case is about.
        killed_at = _kill_frozen_when(process, run / "checkpoints" / "last.ckpt", lambda step: step % 300 != 0 if every_n_steps else True)
        _, err = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert 0 < killed_at < 3000 and (killed_at % 150 == 0 if every_n_steps else killed_at % 300 == 0)
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == killed_at
    else:
        _wait_for(run / "checkpoints" / "last.ckpt")
        process.send_signal(how)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 128 + how and "Traceback" not in err
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "interrupted" and metrics["signal"] == signal.Signals(how).name
        assert f"resume with: python scripts/train.py resume=true hydra.run.dir={run}" in err
    if how == signal.SIGINT:
        return  # the same path as SIGTERM from here on (saves a resume's 4 s of the suite)
    resumed = _train(*extra, "resume=true", f"hydra.run.dir={run}")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
    assert bitwise(run, uninterrupted)
    from tests_helpers import read_events

    ours, theirs = read_events(run), read_events(uninterrupted)
    if how == signal.SIGKILL:  # events not yet flushed died with the process: no step twice, and it ends
        steps = [e.step for e in ours.Scalars("train_loss_step")]
        assert steps == sorted(set(steps)) and steps[-1] == 3000
        return
    for name in ("train_loss_step", "val_loss", "update_ratio/fc1.weight", "weight_norm/fc1.weight", "dead_units/fc1"):
        assert [e.step for e in ours.Scalars(name)] == [e.step for e in theirs.Scalars(name)], name  # no gap, no double
    assert [e.value for e in ours.Scalars("val_loss")] == [e.value for e in theirs.Scalars("val_loss")]


@pytest.mark.slow
def test_a_killed_sweep_finishes_with_resume_without_rerunning_a_finished_job(tmp_path):
    sweep = ["-m", *QUICK, "trainer.max_epochs=60", "optimizer.lr=0.01,0.02,0.03", f"hydra.sweep.dir={tmp_path}"]
    process = _train(*sweep)
    _wait_for(job(tmp_path, "0.02") / "checkpoints" / "last.ckpt")
    process.kill()
    process.wait()
    first = job(tmp_path, "0.01")
    finished_at = (first / "metrics.json").stat().st_mtime_ns
    resumed = _train(*sweep, "resume=true")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"sweep folder: {tmp_path}" in out and "finished already; not run again" in out and "never started; starting it afresh" in out
    assert (first / "metrics.json").stat().st_mtime_ns == finished_at
    statuses = [json.loads((job(tmp_path, lr) / "metrics.json").read_text())["status"] for lr in ("0.01", "0.02", "0.03")]
    assert statuses == ["ok"] * 3
    assert len((tmp_path / "summary.csv").read_text().strip().splitlines()) == 4


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_stops_launching_and_writes_its_summary(tmp_path):
    process = _train("-m", *QUICK, "trainer.max_epochs=150", "optimizer.lr=0.01,0.02,0.03", f"hydra.sweep.dir={tmp_path}")
    _wait_for(job(tmp_path, "0.01") / "checkpoints" / "last.ckpt")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err
    rows = (tmp_path / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and all(",interrupted," in row for row in rows[1:])
    assert "not started: the sweep was interrupted" in (tmp_path / "summary.csv").read_text()


def test_predict_refuses_a_run_that_did_not_finish(capsys, tmp_path, finished):
    metrics = json.loads((finished / "metrics.json").read_text())
    data = tmp_path / "x.csv"
    data.write_text("x0,x1,x2\n0.1,0.2,0.3\n")
    try:
        (finished / "metrics.json").write_text(json.dumps(metrics | {"status": "diverged"}))
        code, _, err = run_in_process(capsys, "predict.py", f"run={finished}", f"data.path={data}", f"output={tmp_path / 'p.csv'}")
        assert code == 2 and "its status is diverged (metrics.json)" in err and "allow_status=[ok,diverged]" in err
        code, _, err = run_in_process(
            capsys, "predict.py", f"run={finished}", f"data.path={data}", f"output={tmp_path / 'p.csv'}", "allow_status=[ok,diverged]"
        )
        assert code == 0 and (tmp_path / "p.csv").is_file()
    finally:
        (finished / "metrics.json").write_text(json.dumps(metrics))
    code, _, err = run_in_process(capsys, "predict.py", f"run={finished}", f"data.path={data}", "allow_status=5")
    assert code == 2 and "allow_status=[5] must be a list of statuses" in err
    code, _, err = run_in_process(capsys, "predict.py", f"run={finished}", f"data.path={data}", "output=/proc/none/p.csv")
    assert code == 2 and "cannot write /proc/none/p.csv" in err
    code, _, err = run_in_process(capsys, "predict.py", f"run={finished}", f"data.path={data}", "allow_status=[ok,bogus]")
    assert code == 2 and "allow_status names bogus, which is not a run's status; choose from ok, diverged, failed, interrupted, unfinished" in err
    early = tmp_path / "early"  # diverged before its first checkpoint
    shutil.copytree(finished, early, ignore=shutil.ignore_patterns("*.ckpt"))
    (early / "metrics.json").write_text(json.dumps({"status": "diverged"}))
    code, _, err = run_in_process(capsys, "predict.py", f"run={early}", f"data.path={data}", "allow_status=[ok,diverged]")
    assert code == 2 and err.strip() == f"error: {early} has no checkpoint: it ended before it wrote one, so there are no weights to predict with"
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("{}")  # not a run, whose status would read "unfinished"
    for folder, also in ((sweep, " (a sweep's folder: name one of its jobs' folders)"), (tmp_path, "")):
        code, _, err = run_in_process(capsys, "predict.py", f"run={folder}", f"data.path={data}")
        assert (
            code == 2 and err.strip() == f"error: run={folder} is not a run folder: it has no config.yaml{also}; point run= at a run a training wrote"
        )


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": "empty"}, "x has no rows"),
        ({"x": "cube"}, "got shapes [20, 3, 2] and [20, 1]"),
        ({"x": "complex"}, "x is complex (complex128)"),
        ({"y": "one class"}, "every row has the same class"),
    ],
)
def test_arrays_that_would_train_garbage_are_refused(capsys, tmp_path, arrays, message):
    import numpy as np

    rng = np.random.default_rng(0)
    x = {"empty": np.zeros((0, 3)), "cube": rng.normal(size=(20, 3, 2)), "complex": rng.normal(size=(20, 3)) + 1j}.get(
        arrays.get("x"), rng.normal(size=(20, 3))
    )
    y = np.zeros(20, dtype=np.int64) if "y" in arrays else rng.normal(size=(len(x), 1))
    np.savez(tmp_path / "data.npz", x=x, y=y)
    extra = ["loss=cross_entropy"] if "y" in arrays else []
    code, _, err = run_in_process(capsys, "train.py", "data=npz", f"data.path={tmp_path / 'data.npz'}", *extra, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and message in err and "Traceback" not in err and "unexpected" not in err


def test_something_unexpected_is_one_line_with_the_traceback_in_the_log(capsys, tmp_path, monkeypatch):
    import microtrain.stack.train as stacked

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(stacked, "multiply_adds_per_step", broken)
    code, _, err = run_in_process(capsys, "train.py", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}")
    assert code == 2 and "KeyError: 'a bug' (unexpected: the traceback is in" in err and "Traceback" not in err
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
    assert "Traceback" in (tmp_path / "train.log").read_text()


def test_a_sweep_resumed_with_a_changed_setting_is_refused_not_started_anew(capsys, tmp_path):
    """trainer.max_epochs=2 names other job folders than the sweep's (1 epoch): resume=true would
    start new jobs beside the ones it was to finish, so it is refused and nothing is written."""
    sweep = ["-m", *QUICK, "optimizer.lr=0.01,0.1", "device=cpu", f"hydra.sweep.dir={tmp_path}"]
    assert run_in_process(capsys, "train.py", *sweep, "trainer.max_epochs=1")[0] == 0
    before = files_of(tmp_path)
    code, out, err = run_in_process(capsys, "train.py", *sweep, "trainer.max_epochs=2", "resume=true")
    assert code == 2 and err.strip().startswith(f"error: resume=true: none of these 2 jobs has a folder in {tmp_path}, which holds 2 other jobs")
    assert files_of(tmp_path) == before
    code, out, err = run_in_process(capsys, "train.py", *sweep, "trainer.max_epochs=1", "resume=true")
    assert code == 0 and out.count("finished already; not run again") == 2


@pytest.mark.parametrize("launcher", ["basic", "stacked"])
def test_a_sweep_run_again_into_its_folder_is_refused_and_writes_nothing(capsys, tmp_path, launcher):
    """The same sweep again, without resume=true or overwrite=true: one line and exit 2 before any
    job, every file as it was (each job was refused alone, the sweep exited 0, its summary listed the
    earlier runs as its own and its HParams files were rewritten)."""
    sweep = ["-m", f"hydra/launcher={launcher}", *QUICK, "device=cpu", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}"]
    assert run_in_process(capsys, "train.py", *sweep, "optimizer.lr=0.01,0.1")[0] == 0
    before = files_of(tmp_path)
    code, out, err = run_in_process(capsys, "train.py", *sweep, "optimizer.lr=0.1,0.2")
    assert code == 2 and err.strip() == (
        f"error: {tmp_path} holds runs of 1 of these 2 jobs (such as device=cpu,model.hidden=8,model=mlp,optimizer.lr=0.1,"
        "trainer.max_epochs=1: a run with status ok, "
        "25 steps); resume=true finishes the sweep (its finished jobs stay as they are), overwrite=true replaces them, "
        "or choose another hydra.sweep.dir"
    )
    assert files_of(tmp_path) == before


@pytest.mark.parametrize(
    "setting",
    [["hydra.sweep.subdir=${hydra.job.num}"], ["hydra.sweeper.max_batch_size=1"]],
    ids=["folders by job number", "batches of one"],
)
def test_a_sweep_resumed_with_new_values_starts_them(capsys, tmp_path, setting):
    """Folders named by job number are not known before the jobs run (no check), and a batch
    without folders yet after one that has them is no changed setting: both go on."""
    sweep = ["-m", *QUICK, "device=cpu", "trainer.max_epochs=1", *setting, f"hydra.sweep.dir={tmp_path}"]
    assert run_in_process(capsys, "train.py", *sweep, "optimizer.lr=0.01")[0] == 0
    code, out, err = run_in_process(capsys, "train.py", *sweep, "optimizer.lr=0.01,0.1", "resume=true")
    assert code == 0, err
    assert out.count("finished already; not run again") == 1 and len([p for p in tmp_path.iterdir() if (p / "metrics.json").is_file()]) == 2


def test_resume_that_drops_the_runs_scheduler_names_the_scheduler_not_its_keys(capsys, tmp_path):
    """resume=true scheduler=none listed scheduler._partial_, scheduler._target_, ... each 'None given'."""
    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", *QUICK, "scheduler=step", "trainer.max_epochs=1", f"hydra.run.dir={run}")[0] == 0
    code, _, err = run_in_process(capsys, "train.py", "resume=true", "scheduler=none", f"hydra.run.dir={run}")
    assert code == 2 and err.startswith("error: resume=true cannot change scheduler (StepLR in the run, none given) in mid-run;")
