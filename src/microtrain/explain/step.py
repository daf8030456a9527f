"""Explain one training step: forward, loss, backward and one optimizer step on the first batch.

For each parameter: the value before, its gradient, the update and the value after; the
optimizer's rule checked against what it did; autograd checked against finite differences and,
for the linear model with a squared loss, against the closed-form gradient; and the backward
pass written out layer by layer with the chain rule (``explain.chain``), checked against autograd.
"""

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, Optional, cast

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from microtrain.config import schema
from microtrain.config.targets import check_run_config
from microtrain.errors import ConfigError
from microtrain import closed_form
from microtrain.run import folder as run_folder
from microtrain.explain.chain import Term, against_autograd, chain
from microtrain.explain.gradcheck import ParameterCheck, check_gradients, n_parameters
from microtrain.engine.build import prepare
from microtrain.engine.step import optimizer_update, train_step
from microtrain.models import functional_forward
from microtrain.engine.trainer import trainer_arguments
from microtrain.explain.update_rules import RuleCheck, check_first_step

GRADCHECK_AUTO_LIMIT = 5_000  # parameters; each costs two forward passes in float64


@dataclass
class StepReport:
    loss: float
    loss_after: float
    prediction: torch.Tensor
    params_before: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    params_after: dict[str, torch.Tensor]
    rules: dict[str, Optional[RuleCheck]]
    gradcheck: list[ParameterCheck] = field(default_factory=list)
    closed_form_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: str = ""
    batch_rows: int = 0
    chain: list[Term] = field(default_factory=list)  # the backward pass, layer by layer (explain.chain)
    chain_vs_autograd: Optional[float] = None  # the largest |chain − autograd| of the parameter gradients
    clipping: str = ""  # trainer.gradient_clip_val: what clipping did to the step's gradients
    gradcheck_skipped: str = ""  # why no finite differences were taken

    def __repr__(self) -> str:
        grads = ", ".join(f"{name} {list(g.shape)} norm {g.norm().item():.4g}" for name, g in self.grads.items())
        held = all(r.holds for r in self.rules.values() if r) and all(c.passed for c in self.gradcheck)
        chain = f"{len(self.chain)} terms, max |chain - autograd| {self.chain_vs_autograd:.2g}" if self.chain else "none"
        return (
            f"Step({self.optimizer}, loss {self.loss:.6g} -> {self.loss_after:.6g} after the step; gradients: {grads}; "
            f"chain rule: {chain}; checks {'hold' if held else 'FAIL'})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "loss_after": self.loss_after,
            "prediction": self.prediction.tolist(),
            "params_before": {k: v.tolist() for k, v in self.params_before.items()},
            "grads": {k: v.tolist() for k, v in self.grads.items()},
            "params_after": {k: v.tolist() for k, v in self.params_after.items()},
            "optimizer": self.optimizer,
            "update_rules": {k: None if r is None else vars(r) for k, r in self.rules.items()},
            "gradcheck": [vars(c) for c in self.gradcheck],
            "closed_form_grads": {k: v.tolist() for k, v in self.closed_form_grads.items()},
            "chain": [term.to_json() for term in self.chain],
            "chain_vs_autograd": self.chain_vs_autograd,
            "clipping": self.clipping,
        }


def config_in_folder(cfg: DictConfig, run_dir: Path, overrides: dict[str, list[str]], say: Callable[[str], None]) -> DictConfig:
    """What ``explain_step.py`` explains in ``run_dir`` (``overrides``: Hydra's ``task`` and
    ``hydra`` lists): a run's folder, that run's step (``config_of_run``); a sweep's folder is
    refused (its jobs' folders hold the runs); a folder named with ``hydra.run.dir`` that holds
    no run, this command's config, as a note says (a mistyped run folder would explain the default)."""
    if (run_dir / run_folder.CONFIG).is_file():
        return config_of_run(cfg, run_dir / run_folder.CONFIG, overrides["task"])
    if (run_dir / "multirun.yaml").is_file() or run_dir.is_dir() and any((job / ".hydra").is_dir() for job in run_dir.iterdir() if job.is_dir()):
        jobs = sorted(job.name for job in run_dir.iterdir() if (job / run_folder.CONFIG).is_file())
        such = f" (such as {run_dir / jobs[0]})" if jobs else ""
        raise ConfigError(f"{run_dir} is a sweep's folder: point hydra.run.dir at one of its jobs' folders{such}")
    if any(o.startswith("hydra.run.dir=") for o in overrides["hydra"]):
        say(f"note: {run_dir} holds no run (no {run_folder.CONFIG}): this explains the step of the config given here, not a run's")
    return cfg


def config_of_run(cfg: DictConfig, saved_file: Path, overrides: Sequence[str]) -> DictConfig:
    """``explain_step.py hydra.run.dir=<a run's folder>``: that run's first step, with the run's
    own ``config.yaml`` (and this command's ``explain.*``), since its step.json lands beside the
    run. Where it runs (``device``, ``log``, ``checkpoint``) may change, as under resume (a CUDA
    run explained on a CPU: ``device=cpu``); restating the run's option (``model=mlp``) is no
    change; anything else that contradicts the run, or a recipe, is refused."""
    from microtrain.run.resume import compare, first_values, shown

    run = saved_file.parent
    saved = cast(DictConfig, OmegaConf.load(saved_file))
    check_run_config(saved, saved_file, bool(cfg.get("trust_run_config")))  # before any of its targets is built
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        top = key.split(".")[0]
        if top in ("hydra", "explain", "trust_run_config", "resume", "overwrite"):
            continue
        if top == "experiment":
            raise ConfigError(f"{override} sets a config of its own, and {run} holds a run: its own config is explained; drop {override}")
        new, old, restated = compare(cfg, saved, key)
        if restated:
            continue
        if top in ("device", "log", "checkpoint") or key == "trainer.enable_progress_bar":  # not the step's numbers
            OmegaConf.update(saved, key, new, merge=False, force_add=True)
            continue
        raise ConfigError(
            f"{run} holds a run with {key}={shown(old)}, not {shown(new)}; explain_step.py explains a run's first step "
            f"with the run's own config: drop {key}, or choose another hydra.run.dir"
        )
    if (batches := saved.trainer.get("accumulate_grad_batches", 1)) != 1:
        raise ConfigError(
            f"{run} trains with trainer.accumulate_grad_batches={batches}, several batches a step; explain_step shows a step of one batch"
        )
    for key, value in first_values(run).items():  # a resume changed it (optimizer.lr): the first step had the first value
        if value is None:  # a key the resume added (optimizer.weight_decay of optimizer=torch): the first step had none
            with open_dict(saved):
                saved.optimizer.pop(key.removeprefix("optimizer."), None)
        else:
            OmegaConf.update(saved, key, value, merge=False)
    with open_dict(saved):
        saved.explain = cfg.explain
    return saved


def explain_step(cfg: DictConfig, run_dir: Optional[Path] = None) -> StepReport:
    """One step of ``engine.step.train_step`` on the first training batch, as training takes it."""
    schema.check(cfg)
    trainer_args, loop = trainer_arguments(cfg.trainer)
    if loop.accumulate != 1:
        raise ConfigError("explain_step shows the step of one batch; drop trainer.accumulate_grad_batches")
    prepared = prepare(cfg)
    prepared.datamodule.setup("fit")
    x, y = next(iter(prepared.datamodule.train_dataloader()))[0]  # the first batch of the first call
    model, loss_fn = prepared.module.model, prepared.module.loss_fn
    if str(cfg.device.precision) in ("64", "64-true"):  # as Lightning's 64-bit precision casts the model and its inputs
        model.double()
        x, y = (t.double() if t.is_floating_point() else t for t in (x, y))
    optimizer = prepared.module.make_optimizer(model.parameters())
    if prepared.module.make_scheduler is not None:  # built as training builds it: a warm-up (LinearLR) sets the first step's lr
        prepared.module.make_scheduler(optimizer)
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]  # the model's own storage: the step moves it
    before = {n: p.clone() for n, p in zip(names, params)}
    with torch.no_grad():
        prediction = model(x)  # what the step's forward computes
    loss, step_grads = train_step(
        params,
        [optimizer.state[p] for p in model.parameters()],
        (x, y),
        optimizer.param_groups[0],
        forward=functional_forward(model),
        loss_fn=loss_fn,
        update=optimizer_update(optimizer),
        clip_val=loop.clip_val,
        clip_algorithm=loop.clip_algorithm,
    )
    grads = dict(zip(names, (g.detach().clone() for g in step_grads)))
    after = {n: p.clone() for n, p in zip(names, params)}
    with torch.no_grad():
        loss_after = loss_fn(model(x), y).item()

    rules = {n: check_first_step(optimizer, p, before[n], grads[n]) for n, p in model.named_parameters()}
    report = StepReport(loss.item(), loss_after, prediction, before, grads, after, rules, optimizer=_describe(optimizer), batch_rows=len(x))
    if _wants_gradcheck(cfg, model):
        report.gradcheck = check_gradients(_model_at(model, before), loss_fn, x, y)
    else:
        report.gradcheck_skipped = (
            "skipped (explain.gradcheck=false)"
            if cfg.explain.gradcheck is False
            else f"skipped: {n_parameters(model)} parameters, above {GRADCHECK_AUTO_LIMIT} (explain.gradcheck=true takes two forward passes per parameter)"
        )
    if loop.clip_val:
        report.clipping = _clipping(_model_at(model, before), loss_fn, x, y, loop.clip_val, loop.clip_algorithm)
    report.chain = chain(model, loss_fn, x, y, before)
    report.chain_vs_autograd = against_autograd(model, loss_fn, x, y, before, report.chain)
    if closed_form.applies(cfg.model.name, cfg.loss.name):
        report.closed_form_grads = closed_form.linear_gradient(x, y, before["weight"], before.get("bias"), cfg.loss.name)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        run_folder.write_json_atomic(Path(run_dir) / "step.json", report.to_json())
    return report


def _clipping(model: torch.nn.Module, loss_fn: Any, x: torch.Tensor, y: torch.Tensor, clip_val: float, algorithm: str) -> str:
    """What trainer.gradient_clip_val did: the step updates with the clipped gradients (grad
    below), while the finite differences, closed form and chain rule are of the unclipped ones."""
    raw = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    if algorithm == "value":
        clipped = sum(int((g.abs() > clip_val).sum()) for g in raw)
        done = f"{clipped} of {sum(g.numel() for g in raw)} entries cut to ±{clip_val:g}"
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw])).item()
        done = (
            f"the total norm {norm:.6g} scaled to {clip_val:g} (×{clip_val / norm:.4g})"
            if norm > clip_val
            else f"the total norm {norm:.6g} is within it: no change"
        )
    return (
        f"gradient_clip_val={clip_val:g} ({algorithm}): {done}; grad and the update are the clipped gradients, "
        "the gradient checks, closed form and chain rule the unclipped ones"
    )


def _wants_gradcheck(cfg: DictConfig, model: torch.nn.Module) -> bool:
    setting = cfg.explain.gradcheck
    if setting == "auto":
        return n_parameters(model) <= GRADCHECK_AUTO_LIMIT
    return bool(setting)


def _model_at(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of the model with the weights it had before the step."""
    import copy

    restored = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in restored.named_parameters():
            param.copy_(values[name])
    return restored


def _describe(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "betas", "eps")
    settings = ", ".join(f"{k}={group[k]}" for k in keys if k in group) + (", maximize=True" if group.get("maximize") else "")
    return f"{type(optimizer).__name__}({settings})"
