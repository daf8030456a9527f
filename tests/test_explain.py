"""explain_step against the notebooks' printed numbers and against independent truths."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from microtrain.closed_form import least_squares_loss, linear_gradient
from microtrain.explain.step import explain_step
from microtrain.explain.gradcheck import check_gradients
from microtrain.training import train
from tests_helpers import make_cfg, run_in_process, run_script

# The notebooks printed results of unrounded weights at 4 decimals.
NOTEBOOK = dict(rel=3e-4, abs=3e-4)


def explain(*overrides, run_dir=None):
    return explain_step(make_cfg(*overrides, config="explain"), run_dir)


def values(tensor):
    return np.asarray(tensor.tolist()).ravel().tolist()


def test_linear_1x1_one_sgd_step():
    r = explain("+experiment=linear_1x1_sgd")
    assert values(r.prediction) == pytest.approx([0.6567, 1.5259, 2.3952, 3.2644], **NOTEBOOK)
    assert r.loss == pytest.approx(10.8365, **NOTEBOOK)
    assert values(r.grads["weight"]) == pytest.approx([-18.0241], **NOTEBOOK)
    assert values(r.params_after["weight"]) == pytest.approx([1.0495], **NOTEBOOK)


def test_a_clipped_step_says_so_and_updates_with_the_clipped_gradient():
    """+trainer.gradient_clip_val=1.0: the step's gradient is the unclipped one (the closed form)
    scaled to norm 1, and the report says which checks are of which."""
    r = explain("+experiment=linear_1x1_sgd", "+trainer.gradient_clip_val=1.0")
    unclipped = torch.cat([r.closed_form_grads[n].flatten() for n in ("weight", "bias")])
    clipped = torch.cat([r.grads[n].flatten() for n in ("weight", "bias")])
    assert clipped.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert values(clipped) == pytest.approx(values(unclipped / unclipped.norm()), rel=1e-4)
    assert r.clipping.startswith(f"gradient_clip_val=1 (norm): the total norm {unclipped.norm().item():.6g} scaled to 1 (×")
    assert "grad and the update are the clipped gradients" in r.clipping and r.rules["weight"].holds
    assert explain("+experiment=linear_1x1_sgd").clipping == ""


def test_a_skipped_gradient_check_says_why():
    r = explain("model=mlp", "model.hidden=2000")
    assert not r.gradcheck and r.gradcheck_skipped.startswith("skipped: 10001 parameters, above 5000 (explain.gradcheck=true")


def test_backward_ones_probe():
    r = explain("+experiment=linear_1x1_ones_probe")
    assert values(r.grads["weight"]) == pytest.approx([10.0])
    assert values(r.grads["bias"]) == pytest.approx([4.0])


def test_mlp_3_3_1_backprop_by_hand():
    r = explain("+experiment=mlp_3_3_1_by_hand")
    assert values(r.prediction) == pytest.approx([-0.5089], **NOTEBOOK)
    g, after = r.grads, r.params_after
    assert values(g["fc2.bias"]) == [1.0]
    assert values(g["fc2.weight"]) == pytest.approx([0.2572, 0.1864, -0.2532], **NOTEBOOK)
    assert values(g["fc1.bias"]) == pytest.approx([-0.4719, -0.5560, -0.3805], **NOTEBOOK)
    assert values(g["fc1.weight"]) == pytest.approx([-0.0472, -0.0944, -0.1416, -0.0556, -0.1112, -0.1668, -0.0381, -0.0761, -0.1142], **NOTEBOOK)
    assert values(after["fc1.weight"]) == pytest.approx([0.5194, -0.0661, -0.3749, -0.4339, 0.4103, 0.3410, 0.1337, -0.0492, 0.3273], **NOTEBOOK)
    assert values(after["fc1.bias"]) == pytest.approx([0.8690, 0.6793, 0.0789], **NOTEBOOK)
    assert values(after["fc2.weight"]) == pytest.approx([-0.7292, -0.7424, -0.1273], **NOTEBOOK)
    assert values(after["fc2.bias"]) == pytest.approx([-1.3802], **NOTEBOOK)


def test_linear_4x3_without_bias():
    r = explain("+experiment=linear_4x3_no_bias")
    assert list(r.params_before) == ["weight"]
    assert values(r.prediction) == pytest.approx([2.3953, 3.3681, -1.2770, -3.8335], **NOTEBOOK)
    assert r.loss == pytest.approx(20.8689, **NOTEBOOK)
    assert values(r.grads["weight"]) == pytest.approx(
        [0.6976, 1.3953, 2.7905, 0.6840, 1.3681, 2.7362, -2.1385, -4.2770, -8.5540, -3.9168, -7.8335, -15.6671], **NOTEBOOK
    )
    assert values(r.params_after["weight"]) == pytest.approx(
        [-0.7139, 0.7070, 0.3139, 0.5002, 1.3415, -0.0615, -0.5324, 1.7739, -0.7363, -0.1666, -1.5436, 0.4720], **NOTEBOOK
    )
    assert r.loss_after == pytest.approx(9.7922, **NOTEBOOK)


def test_relu_mlp_3_4_4():
    r = explain("+experiment=relu_mlp_3_4_4")
    assert values(r.prediction) == pytest.approx([5.7500, 6.1875, 11.3977, 6.4486], **NOTEBOOK)
    assert r.loss == pytest.approx(29.1538, **NOTEBOOK)
    assert values(r.grads["fc1.weight"]) == pytest.approx(
        [7.9427, 15.8855, 31.7709, 6.1575, 12.3151, 24.6302, 6.3732, 12.7465, 25.4929, 0, 0, 0], **NOTEBOOK
    )
    assert values(r.grads["fc2.weight"]) == pytest.approx(
        [3.4945, 6.9921, 19.5826, 0, 3.0807, 6.1641, 17.2638, 0, 6.1781, 12.3615, 34.6208, 0, 1.8014, 3.6043, 10.0947, 0],
        **NOTEBOOK,
    )


def test_w1_b05_sum_of_squares():
    r = explain("+experiment=autograd_w1_b05_sse")
    assert values(r.prediction) == pytest.approx([1.9])
    assert r.loss == pytest.approx(0.04, abs=1e-6)
    assert values(r.grads["weight"]) == pytest.approx([-0.56], abs=1e-6)
    assert values(r.grads["bias"]) == pytest.approx([-0.4], abs=1e-6)
    assert values(r.closed_form_grads["weight"]) == pytest.approx([-0.56], abs=1e-6)


def test_3x2_linear_on_ten_rows_against_plain_torch(tmp_path):
    """A case not in the notebooks: the step.json of microtrain against a hand-written step."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(10, 3, generator=gen), torch.randn(10, 2, generator=gen)
    w, b = torch.randn(2, 3, generator=gen), torch.randn(2, generator=gen)
    fmt = lambda t: str(t.tolist()).replace(" ", "")  # noqa: E731
    explain(
        "data=inline",
        f"data.x={fmt(x)}",
        f"data.y={fmt(y)}",
        "optimizer.lr=0.01",
        f"model.init_values={{weight:{fmt(w)},bias:{fmt(b)}}}",
        run_dir=tmp_path,
    )
    step = json.loads((tmp_path / "step.json").read_text())
    W, B = w.clone().requires_grad_(), b.clone().requires_grad_()
    loss = ((x @ W.T + B - y) ** 2).mean()
    loss.backward()
    assert step["loss"] == pytest.approx(loss.item(), abs=4e-4)
    assert np.allclose(step["grads"]["weight"], W.grad.numpy(), atol=4e-4)
    assert np.allclose(step["params_after"]["weight"], (w - 0.01 * W.grad).numpy(), atol=4e-4)
    assert np.allclose(step["params_after"]["bias"], (b - 0.01 * B.grad).numpy(), atol=4e-4)
    assert np.allclose(step["params_before"]["weight"], w.numpy(), atol=1e-6)


CLASSES = ["data=inline", "data.x=[[0.1,0.3],[1.2,-0.4],[-0.7,0.9],[0.5,0.5],[2.0,-1.0]]", "data.y=[[0],[1],[2],[1],[0]]"]
REGRESSION = ["data.n_samples=20", "data.batch_size=null"]


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("loss", ["mse", "sse", "l1", "huber", "residual_sum", "cross_entropy"])
def test_gradcheck_passes_for_every_model_and_loss(model, loss):
    data = CLASSES if loss == "cross_entropy" else REGRESSION
    shape = ["model.hidden=8", "model.activation=tanh"] if model == "mlp" else []
    r = explain(f"model={model}", f"loss={loss}", *shape, *data)
    assert r.gradcheck and all(c.rel_error < 1e-6 for c in r.gradcheck), r.gradcheck


def test_gradcheck_catches_a_wrong_backward():
    class OffByOnePercent(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, grad):
            return grad * 1.01

    class Broken(nn.Linear):
        def forward(self, x):
            return OffByOnePercent.apply(super().forward(x))

    model = Broken(3, 2)
    checks = check_gradients(model, nn.MSELoss(), torch.randn(8, 3), torch.randn(8, 2))
    assert not any(c.passed for c in checks)
    assert all(c.rel_error == pytest.approx(0.01 / 1.01, rel=1e-3) for c in checks)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer.momentum=0.9"],
        ["optimizer.momentum=0.9", "optimizer.nesterov=true"],
        ["optimizer.weight_decay=0.1"],
        ["optimizer.momentum=0.5", "optimizer.weight_decay=0.1", "optimizer.dampening=0.3"],
        ["optimizer=adam"],
        ["optimizer=adam", "optimizer.weight_decay=0.1"],
        ["optimizer=adamw"],
    ],
)
def test_update_rules_hold(overrides):
    r = explain("model=mlp", "model.hidden=4", *overrides)
    assert all(rule is not None and rule.holds for rule in r.rules.values()), r.rules


def test_update_rule_check_is_not_vacuous():
    """Changing the weights after the step must make the SGD rule fail."""
    from microtrain.explain.update_rules import check_first_step

    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.tensor([0.5, -0.5])
    before = p.detach().clone()
    opt.step()
    assert check_first_step(opt, p, before, p.grad).holds
    with torch.no_grad():
        p.add_(1e-3)
    assert not check_first_step(opt, p, before, p.grad).holds


def test_closed_form_gradient_matches_autograd():
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    layer = nn.Linear(3, 2).double()
    for name, loss_fn in (("mse", nn.MSELoss()), ("sse", nn.MSELoss(reduction="sum"))):
        layer.zero_grad()
        loss_fn(layer(x), y).backward()
        grads = linear_gradient(x, y, layer.weight.detach(), layer.bias.detach(), name)
        torch.testing.assert_close(grads["weight"], layer.weight.grad)
        torch.testing.assert_close(grads["bias"], layer.bias.grad)


def test_optimality_gap_is_logged_and_closes(tmp_path):
    result = train(make_cfg("trainer.max_epochs=30"), tmp_path)
    m = result.metrics
    x = np.c_[np.random.default_rng(0).normal(size=(5, 2)), np.ones(5)]
    assert m["train_loss_optimum"] <= m["train_loss"] and 0 <= m["optimality_gap"] < 1e-3
    # the optimum itself against numpy's least squares on a small problem
    y = np.arange(5.0)[:, None]
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    expected = float(((x @ beta - y) ** 2).mean())
    got = least_squares_loss(torch.tensor(x[:, :2]), torch.tensor(y), bias=True, loss_name="mse")
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_explain_script_prints_and_writes_the_same_numbers(tmp_path):
    done = run_script("explain_step.py", "+experiment=linear_1x1_sgd", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    step = json.loads((tmp_path / "step.json").read_text())
    assert set(step) >= {"loss", "loss_after", "params_before", "grads", "params_after"}
    assert f"loss before the step: {step['loss']:.6g}" in done.stdout
    assert f"grad    [[{round(step['grads']['weight'][0][0], 4)}]]" in done.stdout
    assert "after = before − lr·grad: holds" in done.stdout
    assert "weight       max abs error" in done.stdout and "FAIL" not in done.stdout


def test_the_chain_rule_layer_by_layer_gives_notebook_002s_numbers():
    """Notebook 002 derives by hand: dL/dŷ = 1 (loss = output − 1), dL/d(hidden) = W2ᵀ·dL/dŷ,
    dL/dW2 = hidden, dL/dW1 = (dL/dh)ᵀ·x. The chain computes each from the forward values."""
    report = explain_step(make_cfg("+experiment=mlp_3_3_1_by_hand", config="explain"))
    terms = {t.name: t.value for t in report.chain}
    assert list(terms)[0] == "dL/d(output)" and terms["dL/d(output)"].tolist() == [[1.0]]
    assert terms["dL/d(fc1 activation)"].flatten().tolist() == pytest.approx([-0.4719, -0.5560, -0.3805], abs=1e-3)
    assert terms["dL/d(fc2.weight)"].flatten().tolist() == pytest.approx([0.2572, 0.1864, -0.2532], abs=1e-3)  # the hidden values
    x = torch.tensor([[0.1, 0.2, 0.3]])
    assert torch.allclose(terms["dL/d(fc1.weight)"], terms["dL/d(fc1 pre-activation)"].T @ x)  # the outer product
    assert report.chain_vs_autograd < 1e-7


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=linear"],
        ["model=mlp", "model.activation=relu"],
        ["model=mlp", "model.activation=tanh"],
        ["model=mlp", "model.activation=sigmoid", "loss=l1"],
    ],
)
def test_the_chain_rule_matches_autograd_for_every_model_and_activation(overrides):
    report = explain_step(make_cfg(*overrides, "explain.gradcheck=false", config="explain"))
    grads = {t.name[len("dL/d(") : -1]: t.value for t in report.chain if t.name.endswith(("weight)", "bias)"))}
    assert set(grads) == set(report.grads)  # every parameter's gradient comes out of the chain
    assert report.chain_vs_autograd < 1e-6
    assert all(torch.allclose(grads[n], report.grads[n], atol=1e-6) for n in grads)  # and equals the step's own


def test_explain_step_into_a_run_folder_explains_that_runs_first_step(tmp_path, capsys):
    """hydra.run.dir=<a run's folder>: the run's own config (an MLP here, the command's default
    being the linear model), its first step from the same seeded weights; an override that
    contradicts the run is one line, and the run's files stay as they were."""
    from tests_helpers import files_of

    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", "model=mlp", "model.hidden=8", "trainer.max_epochs=1", f"hydra.run.dir={run}")[0] == 0
    assert run_in_process(capsys, "explain_step.py", f"hydra.run.dir={run}")[0] == 0
    step = json.loads((run / "step.json").read_text())
    solo = explain_step(make_cfg("model=mlp", "model.hidden=8", config="explain"))
    assert list(step["params_before"]) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert step["loss"] == solo.loss and step["grads"]["fc1.weight"] == solo.grads["fc1.weight"].tolist()
    before = files_of(run)
    code, _, err = run_in_process(capsys, "explain_step.py", f"hydra.run.dir={run}", "model=linear")
    assert code == 2 and err.strip() == (
        f"error: {run} holds a run with model=mlp, not linear; explain_step.py explains a run's first step with the run's own config: "
        "drop model, or choose another hydra.run.dir"
    )
    assert files_of(run) == before
    for same in (["model=mlp"], ["device=cpu", "log.inspect=false"]):  # the run's option restated; where it runs
        assert run_in_process(capsys, "explain_step.py", f"hydra.run.dir={run}", *same)[0] == 0
        assert json.loads((run / "step.json").read_text())["loss"] == solo.loss
    code, _, err = run_in_process(capsys, "explain_step.py", f"hydra.run.dir={run}", "+experiment=mlp_3_3_1_by_hand")
    assert code == 2 and "+experiment=mlp_3_3_1_by_hand sets a config of its own" in err
    accumulating = tmp_path / "accumulating"
    assert run_in_process(capsys, "train.py", "+trainer.accumulate_grad_batches=2", "trainer.max_epochs=1", f"hydra.run.dir={accumulating}")[0] == 0
    code, _, err = run_in_process(capsys, "explain_step.py", f"hydra.run.dir={accumulating}")
    assert code == 2 and err.strip().endswith(
        "trains with trainer.accumulate_grad_batches=2, several batches a step; explain_step shows a step of one batch"
    )


def test_explain_step_takes_the_first_steps_lr_after_a_resume_changed_it_and_under_a_warm_up(tmp_path, capsys):
    """The first step's learning rate: the run's first one after resume=true optimizer.lr=0.2
    rewrote config.yaml (history.jsonl keeps it), and LinearLR's start_factor times lr."""
    run = tmp_path / "run"
    assert run_in_process(capsys, "train.py", "trainer.max_epochs=1", f"hydra.run.dir={run}")[0] == 0
    assert run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=2", "optimizer.lr=0.2", f"hydra.run.dir={run}")[0] == 0
    assert run_in_process(capsys, "explain_step.py", f"hydra.run.dir={run}")[0] == 0
    assert "lr=0.05" in json.loads((run / "step.json").read_text())["optimizer"]
    added = tmp_path / "added"  # a key the resume added (optimizer=torch has no weight_decay): the first step had none
    assert run_in_process(capsys, "train.py", "optimizer=torch", "trainer.max_epochs=1", f"hydra.run.dir={added}")[0] == 0
    assert run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=2", "optimizer.weight_decay=0.1", f"hydra.run.dir={added}")[0] == 0
    assert run_in_process(capsys, "explain_step.py", f"hydra.run.dir={added}")[0] == 0
    assert "weight_decay=0," in json.loads((added / "step.json").read_text())["optimizer"]
    warm_up = ["scheduler=step", "scheduler._target_=torch.optim.lr_scheduler.LinearLR", "~scheduler.step_size", "~scheduler.gamma"]
    report = explain_step(make_cfg(*warm_up, "+scheduler.start_factor=0.1", "+scheduler.total_iters=3", config="explain"))
    for name, before in report.params_before.items():
        assert torch.allclose(report.params_after[name], before - 0.005 * report.grads[name], atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_maximize_is_explained_as_the_rule_on_the_negated_gradient(optimizer):
    """+optimizer.maximize=true: the update climbs the gradient, and the rule check says so (it
    said "DOES NOT HOLD")."""
    report = explain_step(make_cfg(f"optimizer={optimizer}", "+optimizer.maximize=true", config="explain"))
    assert "maximize=True" in report.optimizer
    for name, check in report.rules.items():
        assert check is not None and check.holds and check.rule.startswith("maximize: grad → −grad; "), name
    if optimizer == "sgd":
        for name, before in report.params_before.items():
            assert torch.allclose(report.params_after[name], before + 0.05 * report.grads[name], atol=1e-7)


def test_several_values_to_explain_step_ask_for_one_not_for_a_sweep(capsys):
    """explain_step.py 'optimizer.lr=0.1,0.2' said "add -m", and with -m "drop -m"."""
    code, _, err = run_in_process(capsys, "explain_step.py", "optimizer.lr=0.1,0.2")
    assert code == 2 and err.strip() == "error: optimizer.lr=0.1,0.2 lists several values: that is a sweep, which only train.py runs: give one value"


def test_explain_step_into_a_folder_that_holds_no_run_says_so(tmp_path, capsys):
    """A sweep's folder is refused (its jobs' folders hold the runs) and keeps its files; a folder
    named that holds no run (a typo of a run's, a new one) explains this command's config, with a
    note saying so rather than silently; -m is one line (Hydra's plugin error, exit 1, before)."""
    from tests_helpers import files_of, run_in_process

    sweep = tmp_path / "sweep"
    assert run_in_process(capsys, "train.py", "-m", "trainer.max_epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}")[0] == 0
    before = files_of(sweep)
    code, _, err = run_in_process(capsys, "explain_step.py", f"hydra.run.dir={sweep}")
    assert code == 2 and err.strip() == (
        f"error: {sweep} is a sweep's folder: point hydra.run.dir at one of its jobs' folders (such as {sweep / 'seed=0,trainer.max_epochs=1'})"
    )
    assert files_of(sweep) == before
    code, out, _ = run_in_process(capsys, "explain_step.py", f"hydra.run.dir={tmp_path / 'typo'}")
    assert code == 0 and f"note: {tmp_path / 'typo'} holds no run (no config.yaml): this explains the step of the config given here" in out
    code, out, _ = run_in_process(capsys, "explain_step.py", cwd=tmp_path)  # the default folder: no note
    assert code == 0 and "note:" not in out
    for script in ("explain_step.py", "predict.py"):
        code, _, err = run_in_process(capsys, script, "-m", "optimizer.lr=0.1,0.2")
        assert code == 2 and err.strip() == "error: -m runs a sweep, which only train.py does: drop -m"


@pytest.mark.parametrize("args", [[], ["a", "b"]])
def test_report_with_no_folder_or_two_is_one_error_line(args):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from microtrain.cli import report_main; report_main()", *args], capture_output=True, text=True)
    assert (
        done.returncode == 2 and done.stderr.strip() == f"error: give one run or sweep folder, not {len(args)} arguments: microtrain-report <folder>"
    )


def test_the_update_rule_check_holds_at_a_large_learning_rate(capsys, tmp_path):
    """lr=50 moves weights to ~130, where float32 rounds by ~8e-6: the check's tolerance follows
    the size of what it compares (it said DOES NOT HOLD, exit 4, against the weights before)."""
    code, out, _ = run_in_process(capsys, "explain_step.py", "model=mlp", "optimizer.lr=50", f"hydra.run.dir={tmp_path / 'x'}")
    rules = [line for line in out.splitlines() if line.strip().startswith("rule")]
    assert code == 0 and len(rules) == 4 and all(": holds (" in line for line in rules), out
