"""scripts/train.py as a user runs it: a subprocess, with Hydra's command line."""

import json

import pytest

from tests_helpers import read_events, run_script

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
        (["device=cuda"], "device=cuda but no CUDA GPU is visible; use device=cpu or device=auto"),
        (["optimizer.lr=-1"], "optimizer.lr=-1 must be greater than 0"),
        (["optimizer.lr=fast"], "optimizer.lr='fast' is not a number"),
        (["model=mlp", "model.hidden=0"], "model.hidden=0 must be at least 1"),
        (["model.in_features=2"], "model.in_features=2 but the data has 3 features"),
    ],
)
def test_bad_input_exits_with_one_line(tmp_path, args, message):
    done = run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")


def test_unknown_option_lists_the_choices(tmp_path):
    done = run_script("train.py", "model=cnn", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "Could not find 'model/cnn'" in done.stderr and "mlp" in done.stderr
