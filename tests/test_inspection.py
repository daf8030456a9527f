"""Inspection by default: dense weight and gradient statistics, activations, curvature, NaN counts,
tags that sort the loss first and the loss landscape, checked against closed forms and read back
with TensorBoard's own reader (the TensorBoard server: test_report_and_tensorboard.py)."""

import json
import math
from pathlib import Path

import pytest
import torch

from microtrain.landscape import landscape
from microtrain.monitor import curvature
from microtrain.monitor.inspection_grid import Budget, grid
from microtrain.monitor.tags import name_of, tensorboard_tag
from microtrain.engine.build import prepare
from microtrain.training import train
from tests_helpers import make_cfg, read_events, run_in_process, run_script

MLP_PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.fixture(scope="module")
def default_mlp(tmp_path_factory):
    """The default model=mlp run, 20 epochs of 25 steps, as the command runs it: its inspection
    budget counts the command's start-up (in this process it would count the test session's)."""
    folder = tmp_path_factory.mktemp("default_mlp")
    done = run_script("train.py", "model=mlp", "trainer.enable_progress_bar=false", f"hydra.run.dir={folder}", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.slow
def test_default_mlp_run_is_dense(default_mlp):
    events = read_events(default_mlp)
    for name in MLP_PARAMS:
        assert len(events.Scalars(f"update_ratio/{name}")) >= 100
        assert len(events.Scalars(f"grad_norm/{name}")) >= 100
        assert len(events.Histograms(f"weights/{name}")) >= 20
        assert len(events.Histograms(f"grads/{name}")) >= 20
    steps = [s.step for s in events.Scalars("update_ratio/fc1.weight")]
    assert steps[0] == 0 and steps[-1] >= 490  # spread over the whole run
    dead = events.Scalars("dead_units/fc1")
    assert len(dead) >= 100 and all(0 <= d.value <= 1 for d in dead)
    assert len(events.Histograms("activations/fc1")) >= 20 and len(events.Histograms("preactivations/fc1")) >= 20
    assert "custom_scalars__config__" in events.Tags()["tensors"]


def test_auto_grid_keeps_200_points_over_long_runs():
    assert grid(500) == (2, 20)
    every, histograms = grid(1_000_000)
    assert 1_000_000 // every >= 200 and histograms % every == 0 and 20 <= 1_000_000 // histograms <= 30


def test_update_ratio_is_lr_times_gradient_over_weight_norm(tmp_path):
    """Plain SGD: ‖Δw‖ = lr‖g‖, so the update ratio must equal lr·grad_norm/weight_norm."""
    train(make_cfg("trainer.max_epochs=2", "log.inspect_every_n_steps=3", "optimizer.lr=0.05"), tmp_path)
    events = read_events(tmp_path)
    ratios = events.Scalars("update_ratio/weight")
    grads = {s.step: s.value for s in events.Scalars("grad_norm/weight")}
    weights = {s.step: s.value for s in events.Scalars("weight_norm/weight")}
    assert len(ratios) > 10 and [r.step for r in ratios][:3] == [0, 3, 6]
    for r in ratios:
        assert r.value == pytest.approx(0.05 * grads[r.step] / weights[r.step], rel=1e-4)


def test_dead_unit_fraction_matches_the_model_at_step_zero(tmp_path):
    """Full-batch training: step 0's dead fraction is that of the initial model on the training split."""
    cfg = make_cfg(
        "model=mlp",
        "model.hidden=16",
        "model.init=normal",
        "model.init_std=1.0",
        "data.batch_size=null",
        "trainer.max_epochs=3",
        "log.inspect_every_n_steps=1",
    )
    prepared = prepare(cfg)
    x, _ = prepared.splits.train
    with torch.no_grad():
        expected = 1 - (torch.relu(prepared.module.model.fc1(x)) > 0).any(0).float().mean().item()
    train(cfg, tmp_path)
    first = read_events(tmp_path).Scalars("dead_units/fc1")[0]
    assert first.step == 0 and first.value == pytest.approx(expected)


def test_saturated_units_for_tanh(tmp_path):
    train(make_cfg("model=mlp", "model.activation=tanh", "model.init=normal", "model.init_std=10", "trainer.max_epochs=1"), tmp_path)
    values = [s.value for s in read_events(tmp_path).Scalars("saturated_units/fc1")]
    assert values and values[0] > 0.5  # weights of std 10 push most tanh units into their flat tails


@pytest.mark.parametrize("histograms", ["true", "false"])
def test_curvature_of_least_squares_is_its_closed_form(tmp_path, histograms):
    """A linear model's MSE has the constant Hessian 2/N·[X 1]ᵀ[X 1]: its top eigenvalue is known.
    Curvature follows the histograms' grid, drawn or not (log.histograms=false)."""
    cfg = make_cfg("trainer.max_epochs=2", "log.curvature=true", "log.inspect_every_n_steps=5", "optimizer.lr=0.02", f"log.histograms={histograms}")
    x, _ = prepare(cfg).splits.train
    design = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    expected = torch.linalg.eigvalsh(2 / len(x) * design.T @ design)[-1].item()
    train(cfg, tmp_path)
    events = read_events(tmp_path)
    tops = events.Scalars("hessian_top_eigenvalue")
    assert len(tops) >= 2 and all(t.value == pytest.approx(expected, rel=1e-4) for t in tops)
    assert all(e.value == pytest.approx(2 / 0.02) for e in events.Scalars("edge_of_stability"))
    noise = events.Scalars("gradient_noise_scale")
    assert noise and all(n.value > 0 and math.isfinite(n.value) for n in noise)
    assert bool(events.Tags()["histograms"]) == (histograms == "true")


def test_power_iteration_finds_the_exact_top_eigenvalue_above_the_exact_limit():
    torch.manual_seed(0)
    model = torch.nn.Linear(1100, 1)  # 1101 parameters: above EXACT_LIMIT, so power iteration
    x, y = torch.randn(256, 1100) + 1.0, torch.randn(256, 1)
    design = torch.cat([x.double(), torch.ones(256, 1, dtype=torch.float64)], dim=1)
    exact = torch.linalg.eigvalsh(2 / 256 * design.T @ design)[-1].item()
    assert curvature.top_hessian_eigenvalue(model, torch.nn.MSELoss(), x, y) == pytest.approx(exact, rel=1e-3)


def test_gradient_noise_scale_against_per_sample_gradients_by_hand():
    torch.manual_seed(0)
    model, loss_fn = torch.nn.Linear(3, 1), torch.nn.MSELoss()
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    rows = []
    for i in range(16):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    g = torch.stack(rows)
    expected = (g.var(0).sum() / (g.mean(0) @ g.mean(0))).item()
    assert curvature.gradient_noise_scale(model, loss_fn, x, y) == pytest.approx(expected, rel=1e-6)


def test_non_finite_weights_are_counted_and_named(capsys, tmp_path):
    code, out, err = run_in_process(capsys, "train.py", "model=mlp", "optimizer.lr=1e6", "log.inspect_every_n_steps=1", f"hydra.run.dir={tmp_path}")
    assert code == 3 and "Traceback" not in err
    assert "first non-finite" in err and "NaN" in err
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"
    counted = [t for t in read_events(tmp_path).Tags()["scalars"] if t.startswith("nonfinite/")]
    assert counted and any(t.endswith("/nan") for t in counted)


@pytest.mark.slow
def test_tags_sort_the_loss_first(default_mlp):
    tags = sorted(read_events(default_mlp).accumulator.Tags()["scalars"])
    assert tags[0].startswith("1_loss/") and tags[1].startswith("1_loss/")
    assert [name_of(tensorboard_tag(n)) for n in ("val_loss", "val_r2", "weight_norm/fc1.weight", "lr", "anything")] == [
        "val_loss",
        "val_r2",
        "weight_norm/fc1.weight",
        "lr",
        "anything",
    ]


def test_inspect_false_turns_inspection_off(tmp_path):
    train(make_cfg("model=mlp", "trainer.max_epochs=2", "log.inspect=false"), tmp_path)
    events = read_events(tmp_path)
    assert not events.Tags()["histograms"]
    assert not [t for t in events.Tags()["scalars"] if "/" in t and t.split("/")[0] in ("update_ratio", "grad_norm", "dead_units")]
    assert "val_loss" in events.Tags()["scalars"]


def test_landscape_of_a_two_parameter_model_is_its_loss_surface(tmp_path):
    train(make_cfg("+experiment=linear_1x1_sgd", "trainer.max_epochs=30", "log.inspect_every_n_steps=1"), tmp_path)
    view = landscape(tmp_path)
    assert view.labels == ("weight", "bias") and len(view.path) >= 30
    assert view.path[0].tolist() == pytest.approx([0.8693, -0.2126])
    x, y = torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 4, 6, 8])
    for i, j in ((0, 0), (20, 7), (40, 40)):  # MSE of (w, b) by hand
        w, b = view.a[i].item(), view.b[j].item()
        assert view.loss[j, i].item() == pytest.approx(((w * x + b - y) ** 2).mean().item(), rel=1e-5)


@pytest.mark.slow
def test_landscape_of_an_mlp_passes_through_its_final_loss(default_mlp):
    view = landscape(default_mlp)
    assert view.path[-1].abs().max().item() < 1e-6  # the plane is centred on the final weights
    i, j = view.a.abs().argmin(), view.b.abs().argmin()
    assert view.a[i].abs().item() < 1e-6 and view.b[j].abs().item() < 1e-6  # the final weights are a grid point
    final = json.loads((default_mlp / "metrics.json").read_text())["train_loss"]
    assert view.loss[j, i].item() == pytest.approx(final, rel=1e-4)
    assert view.loss.min().item() > 0 and view.loss.max().item() > 2 * final  # a valley, not a flat plane


def _inspected(run: Path) -> int:
    return len(read_events(run).Scalars("weight_norm/fc1.weight"))


BUDGETED = ["model=mlp", "model.hidden=8", "trainer.max_epochs=4", "log.inspect_budget=0.0001", "trainer.enable_progress_bar=false"]


def test_a_python_call_budgets_inspection_from_the_call_not_from_the_import(tmp_path, monkeypatch):
    """An hour after ``import microtrain`` in a notebook, a run's inspection budget is a share of
    its own call's time, not of the hour: with a budget of 0.01 %, auto inspection thins out to
    a few points of 100 steps (it kept all 100 when the hour counted)."""
    import microtrain as mt

    monkeypatch.setattr(mt, "STARTED", mt.STARTED - 3600)  # a notebook's process, an hour after its import
    monkeypatch.setattr(mt, "START_UP", None)  # before its first run
    run = mt.train(*BUDGETED, run_dir=tmp_path / "late")
    assert run.metrics["steps"] == 100 and 2 <= _inspected(run.folder) < 30
    assert mt.START_UP is not None and mt.START_UP < 600  # the call's start-up, not the hour


def test_each_job_of_a_sweep_in_one_process_budgets_its_own_time(tmp_path, capsys, monkeypatch):
    """A basic-launcher sweep runs its jobs in one process, and a stacked sweep its groups: each
    job's budget is a share of its own time and the command's start-up, as the first job's, not of
    the process's age (with which later jobs never thinned out)."""
    import microtrain

    monkeypatch.setattr(microtrain, "STARTED", microtrain.STARTED - 3600)  # a process that started long ago
    monkeypatch.setattr(microtrain, "START_UP", 0.5)  # whose first run started 0.5 s after its command
    code, _, err = run_in_process(capsys, "train.py", "-m", *BUDGETED, "seed=0,1,2", f"hydra.sweep.dir={tmp_path / 'basic'}")
    assert code == 0, err
    counts = [_inspected(next((tmp_path / "basic").glob(f"*seed={n}*"))) for n in range(3)]
    assert all(2 <= c < 30 for c in counts), counts
    code, _, err = run_in_process(
        capsys, "train.py", "-m", "hydra/launcher=stacked", *BUDGETED, "optimizer=sgd,adam", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'stacked'}"
    )
    assert code == 0, err
    counts = [_inspected(p) for p in (tmp_path / "stacked").glob("*optimizer=*")]
    assert len(counts) == 4 and all(2 <= c < 30 for c in counts), counts


def _simulated_run(monkeypatch, steps: int, setup: float, plain: float, drawn: float, compile_at: int = -1) -> tuple[list, list, float]:
    """A run of ``steps`` steps of 2 ms on a fake clock under auto's Budget (5 %, 4 s of start-up):
    ``setup`` seconds before its first step, inspections costing ``plain`` seconds (``drawn`` with
    histograms), 2.4 s of compiling in step ``compile_at``. (inspected steps, histogram steps,
    the share of the run's time and start-up that inspection took)."""
    from microtrain.monitor import inspection_grid

    clock = [setup]
    monkeypatch.setattr(inspection_grid.time, "perf_counter", lambda: clock[0])
    budget = Budget(0.05, 0, steps)
    budget.started, budget.start_up = 0.0, 4.0
    planned = grid(steps)
    every, histograms = planned
    points, drawings = [], []
    for step in range(steps):
        if step % every == 0:
            drawing = step % histograms == 0
            clock[0] += drawn if drawing else plain
            budget.add(drawn if drawing else plain, drawing)
            points.append(step)
            drawings += [step] if drawing else []
            every, histograms = budget.widened(step, every, histograms, drawing, planned)
        clock[0] += 0.002 + (2.4 if step == compile_at else 0.0)
    return points, drawings, budget.spent / (clock[0] + 4.0)


@pytest.mark.parametrize("setup, compile_at", [(0.5, -1), (3.0, -1), (0.5, 1)])
def test_auto_spreads_its_points_over_the_whole_run_within_its_budget(monkeypatch, setup, compile_at):
    """A 64-job stack's costs (3 ms an inspection, 15 ms with histograms, against 2 ms steps):
    the planned grid widens to fit 5 % of the run; the points stay on the planned steps,
    histograms too (also where their grid is 10x the points', no power of 2), and reach the
    run's end. A rule on the cost so far, or a time per step taken from before the first step
    (a compile, a long set-up), bunched them at the start and left the end bare."""
    for steps, every, histograms in ((1000, 5, 40), (500, 2, 20)):
        points, drawings, share = _simulated_run(monkeypatch, steps, setup, 0.003, 0.015, compile_at)
        assert share <= 0.051 and len(points) >= 20 and len(drawings) >= 3
        assert all(p % every == 0 for p in points) and all(d % histograms == 0 for d in drawings)
        assert points[-1] >= 0.9 * steps and drawings[-1] >= 0.6 * steps  # to the end of the run


def test_cheap_inspection_keeps_the_planned_grid(monkeypatch):
    points, drawings, share = _simulated_run(monkeypatch, 500, 0.2, 0.0003, 0.001)
    assert points == list(range(0, 500, 2)) and drawings == list(range(0, 500, 20)) and share < 0.05
