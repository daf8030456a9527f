"""scripts/train.py as a user runs it: a subprocess, with Hydra's command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests_helpers import files_of, read_events, run_in_process, run_script

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, n_params", [("linear", 2), ("mlp", 4)])
def test_train_script_runs_and_reports(tmp_path, model, n_params):
    run_dir = tmp_path / "run"
    done = run_script("train.py", f"model={model}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"run folder: {run_dir}" in done.stdout
    assert f"tensorboard --logdir {run_dir}" in done.stdout
    assert "final: train_loss=" in done.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train_loss", "val_loss"} <= metrics.keys()
    histograms = read_events(run_dir).Tags()["histograms"]
    assert len([t for t in histograms if t.startswith("weights/")]) == n_params
    assert len([t for t in histograms if t.startswith("grads/")]) == n_params
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert not (tmp_path / "outputs").exists()  # hydra.run.dir respected, no stray folders


def test_default_run_folder_is_under_outputs_and_cwd_unchanged(tmp_path):
    done = run_script("train.py", "trainer.max_epochs=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (metrics,) = (tmp_path / "outputs").glob("*/*/metrics.json")
    assert json.loads(metrics.read_text())["status"] == "ok"


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=cnn"], "error: model=cnn is not an option of model; choose one of: linear, mlp"),
        (["optimizer.lr=-1"], "error: optimizer.lr=-1 must be greater than 0"),
        (["-m", "model=cnn,mlp"], "error: model=cnn is not an option of model"),
    ],
)
def test_a_typo_or_refused_run_is_one_line_with_a_way_out_and_leaves_no_folder(tmp_path, monkeypatch, capsys, args, message):
    """In the default run folder (outputs/<date>/<time>, or multirun/ for a sweep): nothing stays."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_in_process(capsys, "train.py", *args, "trainer.max_steps=5")
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(message) and "Traceback" not in out + err
    assert list(tmp_path.iterdir()) == []


def test_a_rerun_into_a_finished_folder_is_refused_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_in_process(capsys, "train.py", "trainer.max_steps=20", f"hydra.run.dir={run}")
    assert code == 0, err
    assert not (run / ".lock").exists()  # a finished folder keeps no lock file
    before = files_of(run)
    code, _, err = run_in_process(capsys, "train.py", "trainer.max_steps=30", f"hydra.run.dir={run}")
    assert code == 2 and err.strip() == (
        f"error: {run} holds a run with status ok, 20 steps; resume=true continues it, overwrite=true replaces it, or choose another hydra.run.dir"
    )
    assert files_of(run) == before
    code, _, err = run_in_process(capsys, "train.py", "trainer.max_steps=30", f"hydra.run.dir={run}", "overwrite=true")
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["steps"] == 30
    steps = [s.step for s in read_events(run).Scalars("train_loss_step")]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # one run's curve: the old events went


def test_resume_of_a_finished_run_says_there_is_nothing_to_do_and_touches_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", "trainer.max_epochs=1", f"hydra.run.dir={run}")[0] == 0
    before = files_of(run)
    code, out, err = run_in_process(capsys, "train.py", "resume=true", f"hydra.run.dir={run}")
    assert code == 0, err
    assert f"resume: {run} already finished (status ok, 25 steps): nothing to do" in out
    assert files_of(run) == before


def test_help_cut_short_by_head_prints_no_traceback(tmp_path):
    done = subprocess.run(f"{sys.executable} -m microtrain --help | head -1", shell=True, capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.startswith("microtrain-train [group=option ...]") and "Error" not in done.stderr


def test_explain_help_is_its_own(tmp_path):
    done = run_script("explain_step.py", "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("microtrain-explain [the same group=option")
    assert "gradcheck: auto" in done.stdout and "microtrain-train [group" not in done.stdout


def test_predict_help_is_its_own(tmp_path):
    done = run_script("predict.py", "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("microtrain-predict run=<run folder> data.path=")
    assert "data.missing=drop" in done.stdout and "model:" not in done.stdout and "Configuration groups" not in done.stdout


def test_text_labels_without_a_classification_loss_get_the_hint(tmp_path, capsys):
    table = tmp_path / "labels.csv"
    table.write_text("a,b,label\n1,2,M\n2,3,B\n3,4,M\n4,5,B\n")
    code, _, err = run_in_process(capsys, "train.py", "data=csv", f"data.path={table}", "data.target=label", f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 2 and err.strip().endswith("'M' is not a number; a text label is a class: train a classifier with loss=cross_entropy")
    assert not (tmp_path / "r").exists()  # refused once its data was read: its folder is removed
    import logging

    logging.getLogger("tensorboard").info("a later line in this process")  # its log file's handler went with the folder (it raised FileNotFoundError)


def test_training_from_python_is_as_quiet_as_the_command_line(tmp_path):
    code = (
        "from tests_helpers import make_cfg; from microtrain.training import train; "
        f"print(train(make_cfg('trainer.max_steps=5'), {str(tmp_path)!r}).metrics['status'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr
    chatter = ("GPU available", "TPU available", "litlogger", "LeafSpec", "exists and is not empty", "Warning")
    assert not [c for c in chatter if c in done.stdout + done.stderr], done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")
