"""Real Hydra multiruns: grid, failures, joblib, submitit_local, Optuna; and DDP on two CPU processes."""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests_helpers import ROOT, read_events, run_in_process, run_script

pytestmark = pytest.mark.slow
QUICK = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "device=cpu"]


def sweep(tmp_path, *args, timeout=300, code=0):
    done = run_script("train.py", "-m", *args, *QUICK, f"hydra.sweep.dir={tmp_path}", cwd=tmp_path, timeout=timeout)
    assert done.returncode == code, done.stdout + done.stderr
    with open(tmp_path / "summary.csv") as handle:
        return done, list(csv.DictReader(handle))


def job_metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_grid_sweep_lines_up_four_runs(tmp_path):
    done, rows = sweep(tmp_path, "optimizer.lr=0.01,0.1", "model=linear,mlp")
    jobs = {p.name for p in tmp_path.iterdir() if p.is_dir()}
    assert jobs == {f"device=cpu,model={m},optimizer.lr={lr},trainer.max_epochs=2" for m in ("linear", "mlp") for lr in ("0.01", "0.1")}
    for job in jobs:
        tags = read_events(tmp_path / job).Tags()
        first = "weight" if "linear" in job else "fc1.weight"
        assert {f"weights/{first}", f"grads/{first}"} <= set(tags["histograms"])
    assert len(rows) == 4 and sum(r["best"] == "★" for r in rows) == 1
    for row in rows:
        metrics = job_metrics(tmp_path / row["folder"].rsplit("/", 1)[-1])
        assert float(row["val_loss"]) == pytest.approx(metrics["val_loss"]) and row["status"] == "ok"
    assert [float(r["val_loss"]) for r in rows] == sorted(float(r["val_loss"]) for r in rows)
    assert rows[0]["best"] == "★"
    assert "open TensorBoard: tensorboard --logdir" in done.stdout
    assert (tmp_path / "summary.md").read_text().count("\n") == 6


def test_failing_and_diverging_jobs_do_not_stop_the_sweep(tmp_path):
    done, rows = sweep(
        tmp_path, "optimizer.lr=0.05,-1,3.0", "model=mlp", code=1
    )  # a failed job: exit 1 once the others ran (a diverged one is no failure)
    assert done.stderr.strip().endswith("error: 1 of 3 jobs failed or were refused (their errors above)")
    status = {r["overrides"].split()[0]: r for r in rows}
    assert status["optimizer.lr=0.05"]["status"] == "ok" and status["optimizer.lr=0.05"]["best"] == "★"
    assert status["optimizer.lr=-1"]["status"] == "failed"
    assert "must be greater than 0" in status["optimizer.lr=-1"]["error"]
    assert status["optimizer.lr=3.0"]["status"] == "diverged"
    assert rows[0]["overrides"].startswith("optimizer.lr=0.05")


def test_joblib_launcher_runs_jobs_in_two_worker_processes(tmp_path):
    """hydra.launcher.n_jobs=2: the two jobs run in two joblib workers, neither in the sweep's process
    (their training need not overlap: each worker first imports torch and Lightning, seconds apart)."""
    _, rows = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=0.01,0.1")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    pids = set()
    for row in rows:  # each job's log says which process trained it
        log = (Path(row["folder"]) / "train.log").read_text()
        pids |= {int(pid) for pid in re.findall(r"\] - started .*\(pid (\d+)\)", log)}
    assert len(pids) == 2 and os.getpid() not in pids


def test_submitit_local_launcher(tmp_path):
    _, rows = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "optimizer.lr=0.01,0.1")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert list(tmp_path.glob(".submitit/*/*_log.out"))


@pytest.mark.parametrize("metric, mode", [("auto", "min"), ("val_r2", "max")])
def test_optuna_search_three_trials(tmp_path, metric, mode):
    """optimize.mode sets the study's direction (maximize for val_r2), and the summary ranks alike."""
    done, rows = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=3", f"optimize.metric={metric}", f"optimize.mode={mode}")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    result = (tmp_path / "optimization_results.yaml").read_text()
    values = [float(r["val_loss" if metric == "auto" else metric]) for r in rows]  # the summary has the metric's column
    assert values == sorted(values, reverse=mode == "max")
    assert f"best_value: {values[0]}"[:20] in result
    assert f"best {'val_loss' if metric == 'auto' else metric} first" in done.stdout
    assert all("optimizer.lr=" in r["overrides"] and "model.hidden=" in r["overrides"] for r in rows)


def test_ddp_on_two_cpu_processes_writes_one_metrics_file(tmp_path):
    run_dir = tmp_path / "run"
    done = run_script("train.py", "trainer.devices=2", "trainer.strategy=ddp", *QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = job_metrics(run_dir)
    assert metrics["status"] == "ok" and not math.isnan(metrics["val_loss"])
    assert done.stdout.count("run folder:") == 1
    # 800 training rows shared by 2 ranks, batch 32 each: 13 steps per epoch
    assert metrics["steps"] == 26
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_ddp_inside_a_sweep_runs_as_ddp_spawn(tmp_path):
    # one job is enough to show it (each job starts two processes that import torch: ~15 s)
    done, rows = sweep(tmp_path, "trainer.devices=2", "trainer.strategy=ddp", "optimizer.lr=0.01")
    assert "runs as ddp_spawn" in done.stdout
    assert [r["status"] for r in rows] == ["ok"]
    folders = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(folders) == 1 and all(job_metrics(f)["steps"] == 26 for f in folders)


def test_two_nodes_with_gloo_on_localhost_train_one_run(tmp_path):
    """trainer.num_nodes=2: two processes, as two nodes' launchers start them (NODE_RANK,
    MASTER_ADDR), one metrics.json, and the same final weights on both ranks."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["trainer.num_nodes=2", "trainer.strategy=ddp", "trainer.devices=1", *QUICK]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    nodes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "train.py"), *args, f"hydra.run.dir={tmp_path / f'node{rank}'}"],
            env={**env, "NODE_RANK": str(rank)},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (1, 0)
    ]
    for node in nodes:
        out, err = node.communicate(timeout=180)
        assert node.returncode == 0, err
    metrics = job_metrics(tmp_path / "node0")
    assert metrics["status"] == "ok" and metrics["steps"] == 26  # 800 rows shared by 2 ranks, batch 32: 13 steps an epoch
    assert not (tmp_path / "node1" / "metrics.json").exists() and not (tmp_path / "node1" / ".hydra").exists()
    digests = [
        line.split("sha256 ")[1].split()[0]
        for rank in (0, 1)
        for line in (tmp_path / f"node{rank}" / "train.log").read_text().splitlines()
        if "final weights sha256" in line
    ]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_sigterm_to_a_joblib_sweep_reaches_its_workers_and_resume_finishes_it(tmp_path):
    """kill <pid> of the sweep's main process: the workers end their jobs as single runs do
    (last.ckpt, "interrupted"), jobs not started are marked so, the summary is written, exit 143;
    the same command with resume=true then ends every job ok."""
    import signal
    import time

    args = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=mlp",
        "model.hidden=8",
        "trainer.max_epochs=150",
        "data.n_samples=500",  # 13 steps an epoch: the resume's 4 x 150 epochs in less time
        "optimizer.lr=0.01,0.02,0.03,0.04",
        "trainer.enable_progress_bar=false",
        "device=cpu",
        f"hydra.sweep.dir={tmp_path}",
    ]
    sweep_run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    assert sweep_run.poll() is None, "the sweep ended before it could be interrupted"
    sweep_run.send_signal(signal.SIGTERM)
    out, err = sweep_run.communicate(timeout=120)
    assert sweep_run.returncode == 143, err
    statuses = sorted(job_metrics(folder)["status"] for folder in tmp_path.iterdir() if folder.is_dir())
    assert statuses == ["interrupted"] * 4 and "the sweep was interrupted" in out and "Traceback" not in err
    assert list(tmp_path.glob("*/checkpoints/last.ckpt"))  # the running jobs saved where they stopped
    again = subprocess.run([*args, "resume=true"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(job_metrics(folder)["status"] for folder in tmp_path.iterdir() if folder.is_dir()) == ["ok"] * 4


def test_a_second_sweep_into_a_folder_sums_up_its_own_jobs_and_overwrite_replaces_them(tmp_path, capsys):
    """The summary (and HParams) lists this sweep's jobs, not those an earlier sweep left in the
    folder; overwrite=true is not part of a job's folder name, so it replaces the job's folder."""
    folder = tmp_path / "sweep"

    def swept(*args: str) -> list[dict]:
        code, _, err = run_in_process(capsys, "train.py", "-m", "hydra/launcher=stacked", *args, *QUICK, f"hydra.sweep.dir={folder}")
        assert code == 0, err
        with open(folder / "summary.csv") as handle:
            return list(csv.DictReader(handle))

    assert len(swept("optimizer.lr=0.04,0.05")) == 2
    rows = swept("optimizer.lr=0.01,0.02", "seed=1")
    assert sorted(r["overrides"].split()[:2] for r in rows) == [[f"optimizer.lr={lr}", "seed=1"] for lr in ("0.01", "0.02")]
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 4
    earlier = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in folder.iterdir() if p.is_dir()}
    rows = swept("optimizer.lr=0.01,0.02", "seed=1", "overwrite=true")
    assert {Path(r["folder"]).name for r in rows} == {name for name in earlier if "seed=1" in name}
    now = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in folder.iterdir() if p.is_dir()}
    assert now.keys() == earlier.keys() and [name for name in now if now[name] != earlier[name]] == [r for r in now if "seed=1" in r]


def test_a_mistyped_key_in_a_sweep_is_refused_with_all_its_values(tmp_path, capsys):
    """The way to add the key names the sweep's values as typed (Hydra's message names one job's)."""
    code, _, err = run_in_process(capsys, "train.py", "-m", "optimizer.lrr=0.01,0.1", f"hydra.sweep.dir={tmp_path}")
    assert code == 2 and err.strip().endswith("(did you mean optimizer.lr?); to add a new key write +optimizer.lrr=0.01,0.1")


def test_a_failed_trial_is_the_worst_value_for_a_maximising_search(tmp_path, capsys):
    """A job that fails returns the worst objective for optimize.mode: -inf when maximising (it
    returned +inf, which a maximising Optuna study took as its best trial, failed point and all)."""
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=4", "model.hidden=choice(0,16)", "optimize.metric=val_r2", "optimize.mode=max"]
    code, _, err = run_in_process(capsys, "train.py", "-m", *search, *QUICK, "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}")
    assert code == 1, err  # its failed trial
    statuses = [json.loads(p.read_text())["status"] for p in tmp_path.glob("*/metrics.json")]
    assert "failed" in statuses and "ok" in statuses  # model.hidden=0 is refused
    result = (tmp_path / "optimization_results.yaml").read_text()
    assert "model.hidden: 16" in result and "inf" not in result, result


def test_a_damaged_metrics_json_is_a_failed_row_of_a_resumed_sweep(tmp_path, capsys):
    """Its job refuses to resume in one line; the summary lists it failed and the sweep exits 1
    (the summary's callback raised, Hydra turned that into a warning, and the sweep exited 0)."""
    args = ["-m", "optimizer.lr=0.01,0.02", *QUICK, "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}"]
    assert run_in_process(capsys, "train.py", *args)[0] == 0
    (damaged,) = tmp_path.glob("*optimizer.lr=0.02*/metrics.json")
    damaged.write_text('{"status": "ok", "train_loss": \n')
    code, out, err = run_in_process(capsys, "train.py", *args, "resume=true")
    assert code == 1 and f"{damaged} cannot be read" in err and "Warning" not in err, out + err
    with open(tmp_path / "summary.csv") as handle:
        rows = {r["overrides"].split()[0]: r for r in csv.DictReader(handle)}
    assert rows["optimizer.lr=0.02"]["status"] == "failed" and rows["optimizer.lr=0.01"]["status"] == "ok"


def test_the_printed_summary_shows_values_rich_would_read_as_markup(tmp_path):
    """data.exclude=[id,label] is a rich markup tag: the table printed 'data.exclude=' without it."""
    from io import StringIO

    from rich.console import Console

    from microtrain.sweep_summary import print_summary

    out = StringIO()
    row = {"best": "*", "overrides": "data.exclude=[id,label] optimizer.lr=0.1", "status": "ok", "metric": "val_loss", "val_loss": 0.25}
    print_summary([row], tmp_path / "[b]", Console(file=out, width=200))
    assert "data.exclude=[id,label] optimizer.lr=0.1" in out.getvalue() and str(tmp_path / "[b]" / "summary.csv") in out.getvalue()
