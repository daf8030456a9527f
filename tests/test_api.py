"""microtrain from Python (``microtrain.api``): the same runs as the command line, a Run to look
at, one-line errors as ConfigError, nothing of a call left behind in the process, and the
tutorial notebook executed by a real Jupyter kernel."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import microtrain as mt
from microtrain.errors import DataError
from tests_helpers import ROOT, read_events, run_in_process

TINY = ["model=mlp", "model.hidden=8", "trainer.max_epochs=3", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> mt.Run:
    return mt.train(*TINY, run_dir=tmp_path_factory.mktemp("api") / "run")


def test_a_run_from_python_is_the_command_lines_run(run, tmp_path, capsys):
    assert run.metrics["status"] == "ok" and run.metrics["steps"] == 75
    assert run.config.model.hidden == 8 and (run.folder / ".hydra" / "overrides.yaml").is_file()
    code, _, err = run_in_process(capsys, "train.py", *TINY, f"hydra.run.dir={tmp_path / 'cli'}")
    assert code == 0, err
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert (cli["train_loss"], cli["val_loss"]) == (run.metrics["train_loss"], run.metrics["val_loss"])  # same seed, same run


def test_history_holds_every_scalar_tensorboard_holds(run):
    history = run.history
    events = read_events(run.folder)
    assert set(history.columns) == set(events.Tags()["scalars"]) and history.index.name == "step"
    for tag in ("val_loss", "train_loss_step", "grad_norm/fc1.weight"):
        points = events.Scalars(tag)
        assert history[tag].dropna().tolist() == pytest.approx([p.value for p in points])
        assert history[tag].dropna().index.tolist() == [p.step for p in points]


def test_predict_gives_what_predict_py_writes(run, tmp_path, capsys):
    rows = pd.DataFrame({"x0": [0.5, -1.0], "x1": [0.0, 2.0], "x2": [1.5, 0.25]})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    code, _, err = run_in_process(capsys, "predict.py", f"run={run.folder}", f"data.path={tmp_path / 'rows.csv'}", f"output={tmp_path / 'out.csv'}")
    assert code == 0, err
    written = pd.read_csv(tmp_path / "out.csv")["predicted_y0"].to_numpy()
    assert run.predict(rows)[:, 0] == pytest.approx(written, abs=1e-6)  # predict.py writes 7 significant digits
    assert run.predict(rows.to_numpy()) == pytest.approx(run.predict(rows[["x2", "x0", "x1"]]))  # by name, in any order
    with pytest.raises(ValueError, match=r"rows of 3 features \(x0, x1, x2\)"):
        run.predict(np.zeros((2, 4)))


def test_predict_refuses_what_predict_py_refuses_in_the_callers_terms(run, tmp_path):
    """Non-finite or non-numeric arrays, a DataFrame's bad cell by its row and missing=, an unknown
    checkpoint with the ones there are, and a run that did not finish (unless allowed)."""
    rows = pd.DataFrame({"x0": [0.5, None], "x1": [0.0, 2.0], "x2": [1.5, "a"]})
    for x, message in [
        (np.array([[0.5, np.inf, 1.0]]), r"x\[0, 1\] is inf; remove or fill non-finite values"),
        ([["a", "b", "c"]], "x must be numbers, rows x features"),
        (rows[["x0", "x1"]].assign(x2=1.0), r"x: row 1 \(by position\), column 'x0' is empty; fill it, or set missing=drop or missing=mean"),
        (rows, r"x: row 1 \(by position\), column 'x2': 'a' is not a number"),
        (rows[["x0", "x1"]], r"x: no column 'x2', which the model was trained on; the DataFrame has: x0, x1"),
    ]:
        with pytest.raises(DataError, match=message):
            run.predict(x)
    with pytest.raises(mt.ConfigError, match=r"^missing=mean fills cells with the training means, .* use missing=drop"):
        run.predict(rows[["x0", "x1"]].assign(x2=1.0), missing="mean")  # the run trained without data.missing=mean
    kept = run.predict(rows[["x0", "x1"]].assign(x2=1.0), missing="drop")
    assert not np.isnan(kept[0, 0]) and np.isnan(kept[1, 0])  # the dropped row predicts nothing
    assert kept[0, 0] == pytest.approx(run.predict(np.array([[0.5, 0.0, 1.0]]))[0, 0])
    with pytest.raises(mt.ConfigError, match=r"has no checkpoints/bogus.ckpt; checkpoint= names one of its checkpoints: best, last"):
        run.predict(np.zeros((1, 3)), checkpoint="bogus")
    with pytest.raises(mt.ConfigError, match=r"names one of the run's checkpoints by its name, not a file: best, last"):
        run.predict(np.zeros((1, 3)), checkpoint=str(run.folder / "checkpoints" / "best.ckpt"))
    with pytest.raises(mt.ConfigError, match=r"has no checkpoints/5.ckpt; checkpoint= names one of its checkpoints: best, last"):
        run.predict(np.zeros((1, 3)), checkpoint=5)  # as Hydra reads checkpoint=5
    copy = tmp_path / "interrupted"
    shutil.copytree(run.folder, copy)
    (copy / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(
        mt.ConfigError, match=r": its status is interrupted \(metrics.json\); predict from a finished run, or allow it with allow_status"
    ):
        mt.load(copy).predict(np.zeros((1, 3)))
    assert mt.load(copy).predict(np.zeros((1, 3)), allow_status=("ok", "interrupted")).shape == (1, 1)


def test_plot_and_html_show_the_run(run):
    import matplotlib.pyplot as plt

    figure = run.plot()
    titles = {ax.get_title() for ax in figure.axes}
    assert {"loss", "weight norm ‖w‖", "gradient norm ‖g‖"} <= titles
    plt.close(figure)
    assert "status" in run._repr_html_() and "ok" in run._repr_html_() and "val_loss" in repr(run)
    assert mt.load(run.folder).metrics == run.metrics


def test_bad_input_raises_config_error_with_the_command_lines_line(tmp_path, capsys):
    code, _, err = run_in_process(capsys, "train.py", "model.hiden=3", f"hydra.run.dir={tmp_path / 'cli'}")
    with pytest.raises(mt.ConfigError) as raised:
        mt.train("model.hiden=3", run_dir=tmp_path / "api")
    assert isinstance(raised.value, ValueError) and code == 2
    assert f"error: {raised.value}" == err.strip()
    assert not (tmp_path / "api").exists()
    with pytest.raises(mt.ConfigError, match="model=cnn is not an option of model; choose one of: linear, mlp"):
        mt.explain_step("model=cnn")
    with pytest.raises(mt.ConfigError, match="not a run folder"):
        mt.load(tmp_path)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: mt.train(["model=mlp"]),
            r"\['model=mlp'\] is not an override: give each as a string, like train\('model=mlp', 'optimizer.lr=0.1'\) \(unpack a list with \*\)",
        ),
        (lambda: mt.train("model=mlp", 3), r"3 is not an override: give each as a string"),
        (
            lambda: mt.sweep("-m", "optimizer.lr=0.1,0.2"),
            r"-m is a command-line flag, not an override: give overrides only \(sweep\(\) runs a sweep itself\)",
        ),
        (
            lambda: mt.sweep("hydra/launcher=basic", "optimizer.lr=0.1,0.2"),
            r"hydra/launcher=basic and launcher='stacked' name two launchers: give launcher='basic'",
        ),
        (
            lambda: mt.train("optimizer.lr=0.1,0.2", "trainer.max_epochs=1"),
            r"lists several values: that is a sweep, so call sweep\(\) \(or give one value\)",
        ),
        (lambda: mt.explain_step(("model=mlp",)), r"\('model=mlp',\) is not an override"),
        (lambda: mt.train("hydra.run.dir=/tmp/a", run_dir="/tmp/b"), r"hydra.run.dir=/tmp/a and run_dir=/tmp/b name two folders: give one"),
        (lambda: mt.sweep("hydra.sweep.dir=/tmp/a", sweep_dir="/tmp/b"), r"hydra.sweep.dir=/tmp/a and sweep_dir=/tmp/b name two folders: give one"),
    ],
)
def test_arguments_python_would_take_but_the_command_line_cannot_are_config_errors(call, message):
    with pytest.raises(mt.ConfigError, match=message):
        call()


LEAK_CHECK = """
import gc, logging, os, signal, sys, threading
import matplotlib
matplotlib.use("svg")  # the caller's backend: a run's report.png leaves it as it is
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.version import VersionBase
import microtrain as mt

def state():
    return (threading.active_count(), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), threading.excepthook,
            dict(os.environ), os.getcwd(), gc.get_freeze_count(), gc.isenabled(), logging.getLogger().handlers[:],
            logging.raiseExceptions, sorted(os.listdir("/proc/self/fd")), GlobalHydra.instance().is_initialized(),
            VersionBase.instance().getbase(), torch.are_deterministic_algorithms_enabled(), matplotlib.get_backend())

folder, tiny = sys.argv[1], sys.argv[2:]
before = state()
mt.train(*tiny, run_dir=folder + "/first")  # the first call imports torch and Lightning, and freezes their objects
mt.train(*tiny, "trainer.deterministic=true", run_dir=folder + "/again")
mt.sweep(*tiny, "optimizer.lr=0.01,0.1", sweep_dir=folder + "/sweep")
mt.sweep(*tiny, "optimizer.lr=0.01,0.1", launcher="basic", sweep_dir=folder + "/basic")
mt.explain_step("model=mlp")
try:
    mt.train("optimizer.lr=-1", run_dir=folder + "/bad")
except mt.ConfigError:
    pass
after = state()
print("same" if after == before else [(a, b) for a, b in zip(before, after) if a != b])
"""


def test_calls_leave_nothing_behind_in_the_process(tmp_path):
    """In a fresh process, as a notebook's: threads, signal handlers, the thread hook, the
    environment, the working folder, the GC freeze, logging, open files, Hydra's global state,
    torch's deterministic switch and matplotlib's backend are as before the calls."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LEAK_CHECK, str(tmp_path), *TINY], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "same"


def test_a_sweep_is_a_table_of_its_jobs(tmp_path):
    table = mt.sweep(*TINY, "optimizer.lr=0.01,0.1", "seed=0,1", sweep_dir=tmp_path / "sweep")
    assert len(table) == 4 and set(table.status) == {"ok"}
    assert table.val_loss.is_monotonic_increasing  # best first
    for folder in table.folder:
        assert json.loads((Path(folder) / "metrics.json").read_text())["stacked"]["jobs"] == 4


def test_a_sweep_with_a_failed_job_returns_its_table_and_one_whose_every_job_failed_raises(tmp_path):
    """The command exits 1 when some jobs failed (2 when all did): from Python, the table with the
    failed row, or the error."""
    table = mt.sweep(*TINY, "trainer.max_epochs=1", "optimizer.lr=0.01,-1", sweep_dir=tmp_path / "some")
    assert list(table.status) == ["ok", "failed"] and "optimizer.lr=-1 must be greater than 0" in table.error.iloc[1]
    with pytest.raises(mt.ConfigError, match="2 of 2 jobs failed or were refused"):
        mt.sweep(*TINY, "trainer.max_epochs=1", "optimizer.lr=-1,-2", sweep_dir=tmp_path / "all")


def test_your_own_config_folder(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text(
        (ROOT / "conf" / "model" / "mlp.yaml").read_text().replace("hidden: 16", "hidden: 3").replace("hidden: 64", "hidden: 3")
    )
    run = mt.train("model=tiny", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", run_dir=tmp_path / "run", config_dir=tmp_path / "conf")
    assert run.config.model.hidden == 3 and run.metrics["status"] == "ok"


def test_explain_step_shows_the_chain_rule_of_notebook_002():
    step = mt.explain_step("+experiment=mlp_3_3_1_by_hand")
    hidden = next(t for t in step.chain if "activation" in t.name and "pre" not in t.name)
    assert [round(v, 4) for v in hidden.value.flatten().tolist()] == pytest.approx([-0.4719, -0.5560, -0.3805], abs=1e-3)
    assert "chain rule" in repr(step) and "checks hold" in repr(step)


@pytest.mark.slow
def test_the_tutorial_notebook_runs_in_a_real_kernel(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [
        "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]
    assert "loss 10.83" in outputs[1] and "dL/dweight -18.02" in outputs[1] and "weight after the step 1.0495" in outputs[1]
    assert "dL/d" in outputs[2] and "largest |chain - autograd|" in outputs[2]
    assert "status=ok" in outputs[3]
    plot = next(cell for cell in notebook.cells if cell.source.startswith("run.plot()"))
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)  # the figure, inline
    assert outputs[-2].count(" ok ") >= 6  # the sweep's table: six jobs, each ok
    assert "model.hiden is not a key of the config" in outputs[-1]
    assert len(list((tmp_path / "multirun").rglob("metrics.json"))) == 6


def test_a_run_folder_named_by_an_override_is_used_as_named_and_resumes(tmp_path):
    """What metrics.json and a Ctrl-C tell you to run (resume=true hydra.run.dir=...) works from Python."""
    folder = tmp_path / "named"
    first = mt.train(*TINY, f"hydra.run.dir={folder}")
    assert first.folder == folder and first.metrics["steps"] == 75
    again = mt.train(*TINY[:-2], "trainer.max_epochs=4", "resume=true", f"hydra.run.dir={folder}")
    assert again.folder == folder and again.metrics["steps"] == 100
    with pytest.raises(mt.ConfigError, match="holds a run"):
        mt.train(*TINY, f"hydra.run.dir={folder}")  # refused, as on the command line, not moved beside it
    table = mt.sweep(*TINY, "optimizer.lr=0.01,0.1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert all(Path(f).parent == tmp_path / "sweep" for f in table.folder)


def test_a_ctrl_c_in_one_call_does_not_stop_the_next(tmp_path):
    import os
    import signal
    import threading

    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mt.train("model=mlp", "trainer.max_epochs=100000", "trainer.enable_progress_bar=false", run_dir=tmp_path / "stopped")
    finally:
        timer.cancel()
    run = mt.train(*TINY, run_dir=tmp_path / "next")
    assert run.metrics["status"] == "ok"


def test_a_classifiers_dropped_row_predicts_nan_as_a_regressions_does(tmp_path):
    iris = mt.train("data=iris", "loss=cross_entropy", "trainer.max_epochs=1", "log.inspect=false", run_dir=tmp_path / "iris")
    info = json.loads((iris.folder / "data_info.json").read_text())
    rows = pd.DataFrame({name: [5.0, None] if i == 0 else [3.0, 3.0] for i, name in enumerate(info["features"])})
    predicted = iris.predict(rows, missing="drop")
    assert predicted[0] in (info["classes"] or range(info["n_outputs"])) and np.isnan(predicted[1])


def test_folders_named_as_hydra_names_them_and_held_absolute(tmp_path, monkeypatch):
    """hydra.run.dir with interpolations (${model.name}, ${now:...}) is the folder the run went
    to; a folder of any letters; a Run stays the same run after the caller changes folder."""
    monkeypatch.chdir(tmp_path)
    run = mt.train(*TINY, "hydra.run.dir=runs/${model.name}_x")
    assert run.folder == tmp_path / "runs" / "mlp_x" and run.metrics["status"] == "ok"
    run = mt.train(*TINY, "hydra.run.dir=runs/${hydra:runtime.choices.model}_y")
    assert run.folder == tmp_path / "runs" / "mlp_y" and run.metrics["status"] == "ok"
    table = mt.sweep(*TINY, "optimizer.lr=0.1", "hydra.sweep.dir=sweeps/${now:%Y}")
    assert list(table.status) == ["ok"] and (tmp_path / "sweeps").is_dir()
    accented = mt.train("trainer.max_epochs=1", "trainer.enable_progress_bar=false", run_dir="ünï")
    monkeypatch.chdir(tmp_path / "runs")
    assert accented.folder == tmp_path / "ünï" and accented.metrics["status"] == "ok"


def test_explain_step_of_a_run_folder_is_that_runs_step(run, tmp_path):
    step = mt.explain_step(f"hydra.run.dir={run.folder}")  # the run's MLP, not the default linear model
    assert {"fc1.weight", "fc2.weight"} <= set(step.grads)
    (tmp_path / "job" / ".hydra").mkdir(parents=True)
    with pytest.raises(mt.ConfigError, match="is a sweep's folder: point hydra.run.dir at one of its jobs' folders"):
        mt.explain_step(f"hydra.run.dir={tmp_path}")
    with pytest.raises(mt.ConfigError, match="cannot be converted to type float without overflow"):
        mt.explain_step("optimizer.lr=1e300")


def test_a_folder_that_holds_no_run_is_said_so(tmp_path):
    with pytest.raises(mt.ConfigError, match="has no config.yaml: it is not a run folder"):
        mt.Run(tmp_path).config
    with pytest.raises(mt.ConfigError, match="holds no TensorBoard logs"):
        mt.Run(tmp_path).history


def test_several_devices_from_python_train_as_ddp_spawn(tmp_path, capsys):
    """strategy=auto with two devices is Lightning's ddp, which re-runs the command in each rank:
    from Python there is no command to re-run (it killed the caller's process)."""
    run = mt.train("trainer.devices=2", "device=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", run_dir=tmp_path / "ddp")
    assert "note: trainer.strategy=auto from Python runs as ddp_spawn" in capsys.readouterr().out
    assert run.metrics["status"] == "ok"
