"""The core's promises: Trainer flags take effect, one step for training and explain_step, and
Lightning's private attributes touched in one module only."""

import json
import re
from typing import Any

import lightning as L
import pytest
import torch

from microtrain.explain.step import explain_step
from microtrain.training import train
from tests_helpers import ROOT, make_cfg

SRC = ROOT / "src" / "microtrain"


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.module.model.state_dict().items()}


def test_gradient_clipping_takes_effect(tmp_path):
    base = ["optimizer.lr=0.5", "trainer.max_steps=30"]
    plain = _weights(train(make_cfg(*base), tmp_path / "plain"))
    clipped = _weights(train(make_cfg(*base, "+trainer.gradient_clip_val=0.01"), tmp_path / "clipped"))
    loose = _weights(train(make_cfg(*base, "+trainer.gradient_clip_val=1e9"), tmp_path / "loose"))
    assert any(not torch.equal(plain[k], clipped[k]) for k in plain)
    assert all(torch.equal(plain[k], loose[k]) for k in plain)  # a bound never reached changes nothing


def test_one_clipped_step_moves_at_most_lr_times_the_bound(tmp_path):
    cfg = make_cfg("model=mlp", "optimizer.lr=0.5", "trainer.max_steps=1", "+trainer.gradient_clip_val=0.01")
    report = explain_step(make_cfg("model=mlp", "optimizer.lr=0.5", "+trainer.gradient_clip_val=0.01", config="explain"))
    moved = torch.sqrt(sum(((report.params_after[n] - report.params_before[n]) ** 2).sum() for n in report.params_before))
    assert moved == pytest.approx(0.5 * 0.01, rel=1e-4)
    trained = _weights(train(cfg, tmp_path))
    for name, after in report.params_after.items():
        assert torch.equal(trained[name], after)  # training's step is explain_step's step, bitwise


def test_accumulating_two_batches_is_one_batch_twice_as_large(tmp_path):
    # 768 training rows: 24 batches of 32 in pairs = 12 steps an epoch, as 12 batches of 64
    rows = "data.n_samples=960"
    accumulated = train(make_cfg(rows, "trainer.max_epochs=3", "+trainer.accumulate_grad_batches=2"), tmp_path / "acc")
    large = train(make_cfg(rows, "trainer.max_epochs=3", "data.batch_size=64"), tmp_path / "large")
    assert accumulated.metrics["steps"] == large.metrics["steps"] == 36
    a, b = _weights(accumulated), _weights(large)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=linear_1x1_sgd"],
        ["model=mlp", "optimizer=adamw"],
        ["model=mlp", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
        ["model=mlp", "device=cpu", "device.precision=64"],  # in float64, as the run (it was float32's step, 3e-8 apart)
    ],
)
def test_explain_step_is_the_first_training_step_bitwise(tmp_path, overrides):
    report = explain_step(make_cfg(*overrides, config="explain"))
    trained = _weights(train(make_cfg(*overrides, "trainer.max_steps=1"), tmp_path))
    for name, after in report.params_after.items():
        assert torch.equal(trained[name], after), name


def test_early_stopping_stops_a_run_whose_val_loss_stalls(tmp_path):
    # an improvement must beat 1e9: none does, so the run stops after patience + 1 validations
    cfg = make_cfg("callbacks=early_stopping", "callbacks.early_stopping.min_delta=1e9", "callbacks.early_stopping.patience=2")
    result = train(cfg, tmp_path)
    assert result.metrics["epochs"] == 3 < cfg.trainer.max_epochs
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == result.metrics["steps"]  # the final epoch is always written


def test_any_trainer_argument_passes_through_and_takes_effect(tmp_path):
    from tests_helpers import read_events

    train(make_cfg("+trainer.check_val_every_n_epoch=5", "trainer.max_epochs=10"), tmp_path / "val")
    assert [p.step for p in read_events(tmp_path / "val").Scalars("val_loss")] == [125, 250]  # epochs 5 and 10 only
    timed = train(make_cfg("+trainer.max_time=00:00:00:01", "trainer.max_epochs=100000", "model=mlp"), tmp_path / "timed")
    assert timed.metrics["status"] == "ok" and 0 < timed.metrics["epochs"] < 100000 and 1.0 <= timed.metrics["seconds"] < 10


PRIVATE = re.compile(r"\._on_before_step|\._on_after_step|_last_global_step_saved|\.fit_loop\b|_evaluate_stopping_criteria")


def test_lightning_internals_are_touched_in_one_module_only():
    users = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if PRIVATE.search(p.read_text())}
    assert users == {"internals.py"}


def test_the_private_lightning_attributes_microtrain_uses_still_exist(tmp_path):
    """Fails loudly when a Lightning upgrade moves what microtrain.internals relies on."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.core.optimizer import LightningOptimizer

    from microtrain import internals as bypass

    optimizer = LightningOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1))
    assert callable(optimizer._on_before_step) and callable(optimizer._on_after_step)
    assert isinstance(bypass.saved_step(ModelCheckpoint(dirpath=tmp_path)), int)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=1)
    assert trainer.fit_loop.epoch_progress.current.processed == 0
    assert bypass.final_epoch(trainer) is False


def test_training_step_reads_in_one_screen_and_no_module_is_long():
    source = (SRC / "engine" / "module.py").read_text()
    start = source.index("    def training_step")
    step = source[start : source.index("\n    def ", start + 1)]
    assert len(step.strip().splitlines()) <= 25
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in [*SRC.rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert not long


def test_any_torch_optim_class_by_name_with_only_its_own_keys(tmp_path):
    result = train(
        make_cfg("optimizer=torch", "optimizer.name=RMSprop", "optimizer.lr=0.05", "+optimizer.alpha=0.9", "trainer.max_epochs=10"), tmp_path
    )
    assert result.metrics["status"] == "ok" and result.metrics["val_loss"] < 0.1
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    assert saved["param_groups"][0]["alpha"] == 0.9 and "square_avg" in saved["state"][0]  # RMSprop's own


def test_help_lists_every_group_and_the_commented_keys(capsys):
    from tests_helpers import run_in_process

    code, out, _ = run_in_process(capsys, "train.py", "--help")
    assert code == 0
    assert "optimizer: adagrad, adam, adamw, rmsprop, sgd, torch" in out and "callbacks: early_stopping, none" in out
    assert "curvature: false   # true: top Hessian eigenvalue against 2/lr" in out
    assert "model=linear (conf/model/linear.yaml):" in out and "# null = inferred from the data" in out
    code, out, _ = run_in_process(capsys, "train.py", "--help", "model=mlp", "optimizer=adam")  # the chosen options' keys
    assert code == 0 and "model=mlp (conf/model/mlp.yaml):" in out and "activation:" in out and "optimizer=adam (conf/optimizer/adam.yaml):" in out
    assert "model=linear (conf/model/linear.yaml):" not in out


# microtrain's layers, lowest first: a module may import its own layer and the ones below
LAYERS = [
    {"microtrain", "errors", "console", "internals", "device", "models", "losses", "optimizers", "closed_form", "usage", "memory"},
    {"data", "config"},
    {"run"},
    {"monitor"},
    {"engine"},
    {"explain", "stack", "sweep_summary", "predict", "report", "landscape", "training"},
    {"cli", "__main__", "api", "runs", "process_state"},
]


def _module_imports() -> dict[str, set[str]]:
    """Each module's imports of microtrain modules at module level (not inside functions, not under TYPE_CHECKING)."""
    import ast

    def name(path: Any) -> str:
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    graph = {}
    for path in SRC.rglob("*.py"):
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) or isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.startswith("microtrain"):
                    found |= {inner.module, *(f"{inner.module}.{a.name}" for a in inner.names)}
                elif isinstance(inner, ast.Import):
                    found |= {a.name for a in inner.names if a.name.startswith("microtrain")}
        graph[name(path)] = found
    return {module: {d for d in found if d in graph and d != module} for module, found in graph.items()}


def test_no_import_cycle_and_no_layer_imports_a_higher_one():
    graph = _module_imports()
    assert len(graph) > 50
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph[module]:
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path[path.index(dep) :], dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])

    def layer(module: str) -> int:
        part = module.split(".")[1] if "." in module else module
        return next(i for i, names in enumerate(LAYERS) if part in names)

    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    assert not upward
