"""Which jobs of a sweep train stacked: the ones whose configs agree on everything a stacked
model shares (model shape, data, batch size, loss, optimizer class, precision, device, run length,
logging), and differ at most in what each copy may hold for itself."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, cast

import torch
from omegaconf import DictConfig, OmegaConf

from microtrain.engine.step import RULES, Rule

# What each stacked job may hold for itself: its seed (initial weights and batch order), its
# initial weights, its scheduler's parameters, its early stopping, and the hyper-parameters its optimizer's rule
# lets each job hold (engine.step.RULES: per_job).
PER_JOB = (
    "seed",
    "model.init",
    "model.init_gain",
    "model.init_std",
    "model.init_values",
    "optimize.",
    "trainer.enable_progress_bar",
    "resume",
    "callbacks.",
)
# Trainer arguments a stacked group carries out for each of its jobs; any other one runs its job alone.
STACKED_TRAINER = {
    "max_epochs",
    "max_steps",
    "max_time",
    "devices",
    "num_nodes",
    "strategy",
    "enable_progress_bar",
    "deterministic",
    "check_val_every_n_epoch",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "accumulate_grad_batches",
}
# Callbacks a stacked group runs for each job (each job its own instance): EarlyStopping freezes
# the job it stops while its neighbours go on. Any other callback runs its job alone.
STACKED_CALLBACKS = (
    "lightning.pytorch.callbacks.EarlyStopping",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.EarlyStopping",
)


@dataclass
class Group:
    jobs: list[int]  # indexes into the sweep's jobs
    shared: dict[str, Any] = field(default_factory=dict)  # the flat keys they agree on


def flat(cfg: DictConfig) -> dict[str, Any]:
    """The job's config as dotted keys (hydra.* left out), values resolved."""
    tree = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    tree.pop("hydra", None)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(tree, "")
    return out


def rule(cfg: DictConfig) -> Optional[Rule]:
    """The update rule of the job's optimizer class (``engine.step.RULES``), or None."""
    target = str(cfg.optimizer.get("_target_"))
    module, _, name = target.rpartition(".")
    return RULES.get(cast(type, getattr(torch.optim, name, None))) if module == "torch.optim" else None


def per_job(key: str, optimizer_keys: tuple[str, ...] = ()) -> bool:
    return (
        key.startswith("scheduler.")
        and key != "scheduler._target_"
        or any(
            key == k or (k.endswith(".") and key.startswith(k)) or key.startswith(k + ".")
            for k in (*PER_JOB, *(f"optimizer.{o}" for o in optimizer_keys))
        )
    )


def why_alone(cfg: DictConfig) -> Optional[str]:
    """Why this job cannot train stacked at all, or None."""
    found = rule(cfg)
    if found is None:
        names = ", ".join(c.__name__ for c in RULES)
        return f"optimizer {cfg.optimizer.get('_target_')} has no stacked update ({names} have)"
    for key in found.off:
        if cfg.optimizer.get(key):
            return f"optimizer.{key}={cfg.optimizer[key]} has no stacked update"
    scheduler = str((cfg.scheduler or {}).get("_target_", "")).rpartition(".")[2]
    if scheduler in ("OneCycleLR", "CyclicLR") and cfg.scheduler.get("cycle_momentum", True):  # torch's that change more than lr
        return f"{scheduler} cycles the momentum, which a stacked job holds fixed (+scheduler.cycle_momentum=false stacks)"
    for name, spec in (cfg.callbacks or {}).items():
        if str(spec.get("_target_") if hasattr(spec, "get") else spec) not in STACKED_CALLBACKS:
            return f"callbacks.{name} is a Lightning callback a stacked group does not run for each job (it runs EarlyStopping per job)"
    for key in cfg.trainer:
        if key not in STACKED_TRAINER:
            return f"trainer.{key} is carried out by Lightning, which runs one model"
    if cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes != 1 or cfg.trainer.strategy != "auto":
        return "several devices or a strategy train one model per process"
    if str(cfg.device.precision) == "16-mixed" and cfg.optimizer.get("momentum") and cfg.optimizer.get("dampening"):
        # a job whose first update overflows starts its momentum buffer at zero, not at its gradient (engine.loss_scale)
        return "optimizer.dampening with momentum under device.precision=16-mixed has no stacked update"
    return None


def group_jobs(cfgs: Sequence[DictConfig], resumed_at: Sequence[int], numbers: Optional[Sequence[int]] = None) -> tuple[list[Group], dict[int, str]]:
    """(groups of two or more jobs that stack, {job: why it runs alone}). Jobs resumed from
    different steps stack apart; a group of one runs alone. ``numbers``: the jobs' numbers in
    the sweep, for the reasons (their positions here by default)."""
    alone: dict[int, str] = {}
    groups: list[Group] = []
    for index, cfg in enumerate(cfgs):
        reason = why_alone(cfg)
        if reason:
            alone[index] = reason
            continue
        own = cast(Rule, rule(cfg)).per_job  # why_alone found it
        keys = {k: v for k, v in flat(cfg).items() if not per_job(k, own)} | {"(resumed at step)": resumed_at[index]}
        for group in groups:
            if group.shared == keys:
                group.jobs.append(index)
                break
        else:
            groups.append(Group([index], keys))
    # A job resumed from a stacked checkpoint stays stacked, even alone: a solo run would not
    # continue it bitwise.
    singles = [g for g in groups if len(g.jobs) == 1 and not g.shared["(resumed at step)"]]
    for group in singles:
        others = [g for g in groups if g is not group]
        alone[group.jobs[0]] = _differences(group, others, numbers or range(len(cfgs)))
    return [g for g in groups if g not in singles], alone


def _differences(single: Group, others: list[Group], numbers: Sequence[int]) -> str:
    """Why a job has no group: the nearest other job (or group) and the keys it differs in, a
    key one of them lacks included (model.hidden of an MLP beside a linear model)."""
    if not others:
        return "it is the only job that can stack"

    def apart(group: Group) -> list[str]:
        return sorted(k for k in single.shared.keys() | group.shared.keys() if single.shared.get(k) != group.shared.get(k))

    nearest = min(others, key=lambda g: len(apart(g)))
    keys = apart(nearest)
    shown = ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
    return f"no other job shares all its settings; the nearest, {_numbers([numbers[j] for j in nearest.jobs])}, differs in {shown}"


def _numbers(jobs: list[int]) -> str:
    """Job numbers with runs shortened: #0-#63, #70."""
    runs: list[list[int]] = []
    for job in jobs:
        if runs and job == runs[-1][-1] + 1:
            runs[-1].append(job)
        else:
            runs.append([job])
    return ", ".join(", ".join(f"#{j}" for j in r) if len(r) < 3 else f"#{r[0]}-#{r[-1]}" for r in runs)


def describe(groups: list[Group], alone: dict[int, str], n_jobs: int, names: Optional[Sequence[str]] = None) -> list[str]:
    """What the sweep stacked, and why the rest did not: printed at its start (``names``: each
    job's overrides, shown beside a job that runs alone)."""
    lines = [f"stacked: {sum(len(g.jobs) for g in groups)} of {n_jobs} jobs in {len(groups)} group(s)"]
    for number, group in enumerate(groups):
        lines.append(f"  group {number + 1}: {len(group.jobs)} jobs ({_numbers(group.jobs)})")
    if len(groups) > 1:
        keys = sorted(k for k in groups[0].shared if any(g.shared.get(k) != groups[0].shared[k] for g in groups[1:]))
        lines.append(f"  the groups differ in {', '.join(keys)}")
    for index, reason in sorted(alone.items()):
        named = f" ({names[index]})" if names and names[index] else ""
        lines.append(f"  job #{index}{named} runs alone: {reason}")
    return lines
