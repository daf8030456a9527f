"""Looking at runs: report.png from TensorBoard logs, a real TensorBoard server over a real sweep, the terminal output."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from microtrain.errors import ConfigError
from microtrain.report import run_figure, sweep_figure, write_report
from microtrain.training import train
from tests_helpers import make_cfg, read_events, run_in_process

MLP_PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlp_run")
    train(make_cfg("model=mlp", "trainer.max_epochs=5"), folder)
    return folder


def titles(figure):
    return [ax.get_title() for ax in figure.axes if ax.get_visible() and ax.get_title()]


def panel(figure, title):
    return next(ax for ax in figure.axes if ax.get_title() == title)


def title_clear_of_the_panels(figure) -> bool:
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    bottom_of_title = figure._suptitle.get_window_extent(renderer).y0
    return all(ax.title.get_window_extent(renderer).y1 <= bottom_of_title for ax in figure.axes if ax.get_visible())


def test_run_report_has_every_panel(mlp_run):
    figure = run_figure(mlp_run, read_events(mlp_run))
    names = titles(figure)
    assert names[:4] == ["loss", "weight norm ‖w‖", "gradient norm ‖g‖", "update ratio ‖Δw‖/‖w‖"]
    for name in MLP_PARAMS:
        assert any(t.startswith(f"weights/{name} at step ") for t in names)
        assert any(t.startswith(f"grads/{name} at step ") for t in names)
    loss_axis = figure.axes[0]
    assert {line.get_label() for line in loss_axis.get_lines()} >= {"train (window mean)", "validation (epoch)"}
    assert len(figure.axes[1].get_lines()) == 4  # one weight-norm curve per parameter
    # one number (fc2.bias): a stem at its value, titled with it, not a bar as wide as the panel
    (bias,) = [t for t in names if t.startswith("weights/fc2.bias at step ")]
    value = float(bias.rsplit(": ", 1)[1])
    assert panel(figure, bias).get_xlim()[0] < value < panel(figure, bias).get_xlim()[1] and not panel(figure, bias).patches
    # no empty panel: beside the landscape, the hidden layer's histograms
    assert any(t.startswith("preactivations/fc1 at step") for t in names) and any(t.startswith("activations/fc1 at step") for t in names)
    assert all(ax.lines or ax.patches or ax.collections for ax in figure.axes if ax.get_visible() and ax.get_title())
    assert title_clear_of_the_panels(figure)
    (colour_bar,) = [ax for ax in figure.axes if ax.get_ylabel() == "training loss"]
    ticks = [t.get_text() for t in colour_bar.get_yticklabels()]
    assert len(ticks) == 5 and all(float(t) > 0 for t in ticks)  # plain numbers such as 0.0109, not 1.17309×10¹
    out = write_report(mlp_run)
    assert out == mlp_run / "report.png" and out.stat().st_size > 20_000


def test_final_histograms_show_the_final_weights(mlp_run):
    last_step = json.loads((mlp_run / "metrics.json").read_text())["steps"]
    assert read_events(mlp_run).Histograms("weights/fc1.weight")[-1].step == last_step


def test_a_sweep_of_runs_shorter_than_the_loss_interval_shows_their_one_point(capsys, tmp_path):
    sweep = ["-m", "optimizer.lr=0.01,0.1", "trainer.max_epochs=1", "device=cpu", "trainer.enable_progress_bar=false"]
    code, out, err = run_in_process(capsys, "train.py", *sweep, f"hydra.sweep.dir={tmp_path}")
    assert code == 0, err
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(read_events(jobs[0]).Scalars("train_loss_step")) == 1  # 25 steps, read every 50: the final window
    from microtrain.stack.plan import failed

    failed(tmp_path / "refused", "optimizer torch.optim.SparseAdam cannot take a step")  # a job refused before its first event
    figure = sweep_figure(tmp_path, jobs)
    lines = panel(figure, "training loss, every job (2)").get_lines()
    assert [len(line.get_xdata()) for line in lines] == [1, 1] and all(line.get_marker() == "." for line in lines)  # visible
    assert figure._suptitle.get_text() == f"microtrain sweep {tmp_path} (3 jobs, 1 failed)"  # it said 2 jobs


def test_a_sweep_report_ranks_by_the_sweeps_own_metric_and_mode(capsys, tmp_path):
    """optimize.metric=val_r2 optimize.mode=max: the bars and the star as summary.csv has them (they ranked by the lowest val_loss)."""
    sweep = ["-m", "optimizer.lr=0.001,0.1", "trainer.max_epochs=1", "optimize.metric=val_r2", "optimize.mode=max", "log.inspect=false"]
    code, out, err = run_in_process(capsys, "train.py", *sweep, f"hydra.sweep.dir={tmp_path}")
    assert code == 0, err
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    bars = panel(sweep_figure(tmp_path, jobs), "final val_r2 per job (best first)")
    best = max(jobs, key=lambda j: json.loads((j / "metrics.json").read_text())["val_r2"])
    assert bars.get_yticklabels()[-1].get_text() == "★ optimizer.lr=" + best.name.split("optimizer.lr=")[1].split(",")[0]


def test_sweep_report(capsys, tmp_path):
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "-m",
        "optimizer.lr=0.01,0.1",
        "trainer.max_epochs=3",
        "device=cpu",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert code == 0, err
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    figure = sweep_figure(tmp_path, jobs)
    assert titles(figure) == [
        "training loss, every job (2)",
        "validation loss, every job (2)",
        "final val_loss against optimizer.lr",
        "final val_loss per job (best first)",
    ]
    curves, val, swept, bars = (panel(figure, t) for t in titles(figure))
    assert len(curves.get_lines()) == 2
    # each job's line coloured by its learning rate, and a colour bar naming it beside each loss panel
    bars_of_colour = [ax for ax in figure.axes if ax.get_ylabel() == "optimizer.lr"]
    assert len(bars_of_colour) == 2
    colours = {tuple(line.get_color()) for line in curves.get_lines()}
    assert len(colours) == 2 and colours == {tuple(line.get_color()) for line in val.get_lines()}
    assert title_clear_of_the_panels(figure)
    (lr_curve,) = swept.get_lines()  # one line: nothing but the learning rate is swept
    assert list(lr_curve.get_xdata()) == [0.01, 0.1] and swept.get_xscale() == "log"
    labels = [t.get_text() for t in bars.get_yticklabels()]
    best = min(jobs, key=lambda j: json.loads((j / "metrics.json").read_text())["val_loss"])
    best_lr = (best / ".hydra" / "overrides.yaml").read_text().split("optimizer.lr=")[1].split()[0]
    assert labels[-1] == f"★ optimizer.lr={best_lr}"  # barh draws bottom-up: the best sits on top
    assert write_report(tmp_path).stat().st_size > 10_000


def test_report_refuses_a_folder_without_logs(tmp_path):
    with pytest.raises(ConfigError, match="holds no TensorBoard logs"):
        write_report(tmp_path)


def test_report_script(tmp_path, mlp_run):
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "scripts" / "report.py"), str(mlp_run)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"report: {mlp_run / 'report.png'}"
    bad = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "scripts" / "report.py"), str(tmp_path / "none")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_terminal_shows_config_tree_progress_and_summary(capsys, tmp_path):
    code, out, err = run_in_process(capsys, "train.py", "model=mlp", "device=cpu", f"hydra.run.dir={tmp_path}", "trainer.max_epochs=2")
    assert code == 0
    assert "microtrain on cpu" in out and "model name=mlp" in out and "optimizer _target_=torch.optim.SGD" in out
    assert "step=50" in out + err and "loss=" in out + err  # the progress bar
    assert f"open TensorBoard: tensorboard --logdir {tmp_path}" in out
    assert "samples_per_s" in read_events(tmp_path).Tags()["scalars"]


def _get(port: int, path: str, body: dict = None) -> object:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=None if body is None else json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


@pytest.mark.slow
def test_tensorboard_server_shows_runs_layout_hparams_and_histograms(capsys, tmp_path):
    """One real TensorBoard server over a real 2x2 sweep: its runs, the Custom Scalars layout, the
    HParams experiment (swept columns first) and every parameter's weight and gradient histograms."""
    code, out, err = run_in_process(
        capsys, "train.py", "-m", "model=linear,mlp", "optimizer.lr=0.01,0.1,30", "trainer.max_epochs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert code == 0, err
    # the same job in another folder of the same name: a row of its own, not merged (and averaged) with the first
    job = next(p for p in (tmp_path / "sweep").iterdir() if "model=mlp" in p.name and "lr=0.1," in p.name + ",")
    shutil.copytree(job, tmp_path / "again" / job.name)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        runs, deadline = [], time.time() + 90
        while time.time() < deadline and len(runs) < 7:
            try:
                runs = _get(port, "/data/runs")
            except OSError:
                time.sleep(0.5)
        assert len(runs) == 7 and all(r.endswith("/tensorboard") and not r.startswith(".") for r in runs)
        layout = _get(port, "/data/plugin/custom_scalars/layout")
        first = layout["category"][0]
        assert first["title"] == "loss" and first["chart"][0]["title"] == "train and validation loss"
        experiment = _get(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
        columns = [(h["name"], h.get("differs", False)) for h in experiment["hparamInfos"]]
        assert columns[:2] == [("lr", True), ("model", True)]  # the swept ones first
        assert dict(columns)["hidden"] is False  # only the MLP has one: not swept
        lr = next(h for h in experiment["hparamInfos"] if h["name"] == "lr")
        assert lr["domainDiscrete"] == [0.01, 0.1, 30]
        assert [m["name"]["tag"] for m in experiment["metricInfos"]][:2] == ["final/val_loss", "final/train_loss"]
        groups = _get(
            port,
            "/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 10,
            },
        )["sessionGroups"]
        linear = [g for g in groups if g["hparams"]["model"] == "linear"]
        assert len(groups) == 7 and len(linear) == 3 and all("hidden" not in g["hparams"] for g in linear)
        assert all(len(g["sessions"]) == 1 for g in groups)
        finished = [g for g in groups if g["hparams"]["lr"] != 30]
        assert all(any(m["name"]["tag"] == "final/val_loss" for m in g["metricValues"]) for g in finished)
        assert {g["sessions"][0]["status"] for g in finished} == {"STATUS_SUCCESS"}
        diverged = [g for g in groups if g["hparams"]["lr"] == 30]  # rows of their own, failed
        assert len(diverged) == 2 and {g["sessions"][0]["status"] for g in diverged} == {"STATUS_FAILURE"}
        histograms = _get(port, "/data/plugin/histograms/tags")
        mlp = [tags for run, tags in histograms.items() if "model=mlp" in run and "lr=30" not in run]
        assert len(mlp) == 3
        for name in MLP_PARAMS:
            assert all(f"1_weights/{name}" in tags and f"2_grads/{name}" in tags for tags in mlp)  # monitor.tags
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_event_checksums_are_tensorboards_own_and_its_reader_accepts_them(tmp_path):
    """monitor.events.masked_crc32c (C, google-crc32c) against TensorBoard's pure-Python one,
    and a file written with it read back by TensorBoard's reader, which checks every record."""
    import os

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards
    from tensorboard.summary.writer import record_writer

    from microtrain.monitor.events import EventFile, masked_crc32c
    from tensorboard.compat.proto.summary_pb2 import Summary

    for size in (0, 1, 8, 100, 4097):
        data = os.urandom(size)
        assert masked_crc32c(data) == tensorboards(data)
    assert record_writer.masked_crc32c is masked_crc32c  # what every writer of the process uses
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    EventFile(tmp_path).add_summaries([(Summary(value=[Summary.Value(tag="x", simple_value=float(step))]), step, 0.0) for step in range(5)])
    assert [e.value for e in EventAccumulator(str(tmp_path)).Reload().Scalars("x")] == [0.0, 1.0, 2.0, 3.0, 4.0]
