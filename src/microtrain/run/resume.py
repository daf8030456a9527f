"""``resume=true``: continue a run from its own folder, whatever the command line repeats.

The run's ``config.yaml`` is the config. An override on the command line either may change in
mid-run (MUTABLE: a longer run, a new learning rate or weight decay, how it logs and where it
runs), and is applied and recorded in the run's ``history.jsonl``, or it would make one run
trained under two configs (the model, data, loss, seed, batch size, optimizer class, ...)
and is refused before anything is written. ``last.ckpt`` is checked (it loads, and its
checksum matches) before anything is written too.
"""

import ast
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from microtrain.config import schema
from microtrain.config.targets import check_run_config
from microtrain.errors import ConfigError
from microtrain.run import folder as run_folder
from microtrain.run.checksums import check_checkpoint

HISTORY = "history.jsonl"
MUTABLE = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.enable_progress_bar",
    "optimizer.lr",
    "optimizer.weight_decay",
    "log.",
    "checkpoint.",
    "device.threads",
    "hydra.",
)
APPLIED_TO_OPTIMIZER = ("lr", "weight_decay")  # set on the restored optimizer's param groups (engine.module)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _mutable(key: str) -> bool:
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in MUTABLE)


def shown(value: Any) -> str:
    """A value for the message: a config group by its option (sgd, mlp), not its whole dict."""
    if isinstance(value, dict):
        name = value.get("name") or str(value.get("_target_", "")).rsplit(".", 1)[-1]
        return name or "+".join(value) or "none"  # callbacks=early_stopping: the callbacks it names
    return repr(value)


def option_name(value: Any) -> Optional[str]:
    """A config group's option by its own name or class (model=mlp, optimizer=adam), if it has one."""
    return str(value.get("name") or value.get("_target_") or "") or None if isinstance(value, dict) else None


def compare(cfg: DictConfig, saved: DictConfig, key: str) -> tuple[Any, Any, bool]:
    """(the command's value of ``key``, the run's, whether the command only restates the run):
    plain values; ``model=mlp`` on an MLP run restates its option, its keys compared one by one."""
    plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
    now, was = plain(OmegaConf.select(cfg, key, default=None)), plain(OmegaConf.select(saved, key, default=None))
    return now, was, now == was or ("." not in key and option_name(now) is not None and option_name(now) == option_name(was))


def resumed_config(cfg: DictConfig, run_dir: Path, overrides: Sequence[str]) -> tuple[DictConfig, list[str]]:
    """(the run's own config with the allowed overrides applied, what changed) — or ConfigError."""
    saved_file = run_dir / run_folder.CONFIG
    if not saved_file.is_file():
        raise ConfigError(f"resume=true but {run_dir} holds no run (no {run_folder.CONFIG}); point hydra.run.dir at a run folder")
    saved = cast(DictConfig, OmegaConf.load(saved_file))
    check_run_config(saved, saved_file, bool(cfg.get("trust_run_config")))  # before any of its targets is built
    changes, refused = [], []
    for override in overrides:
        key = _key(override)
        if key in ("resume", "trust_run_config"):
            continue
        now, was, restated = compare(cfg, saved, key)
        if restated:
            continue
        if not _mutable(key):
            if isinstance(was, dict) and isinstance(now, dict) and now and option_name(now) is None:  # device=cuda: the keys it changes
                refused += [
                    f"{key}.{k} ({shown(was.get(k))} in the run, {shown(now.get(k))} given)"
                    for k in sorted(was.keys() | now.keys())
                    if was.get(k) != now.get(k)
                ]
            else:
                refused.append(f"{key} ({shown(was)} in the run, {shown(now)} given)")
            continue
        OmegaConf.update(saved, key, now, force_add=True)
        changes.append(f"{key}: {was!r} -> {now!r}")
    if refused:
        raise ConfigError(
            f"resume=true cannot change {', '.join(refused)} in mid-run; drop it to resume, or start a new run in another "
            f"hydra.run.dir (what may change: trainer.max_epochs, trainer.max_steps, optimizer.lr, optimizer.weight_decay, log.*, checkpoint.*)"
        )
    with open_dict(saved):
        saved.resume = True
    return saved, changes


def last_checkpoint(run_dir: Path) -> Path:
    """The run's last.ckpt, checked; ConfigError naming the newest good checkpoint if it is damaged."""
    folder = run_dir / run_folder.CHECKPOINTS
    last = folder / "last.ckpt"
    if not last.is_file():
        raise ConfigError(f"resume=true but {last} does not exist; point hydra.run.dir at a run folder that has checkpoints")
    problem = check_checkpoint(last)
    if problem:
        good = [p for p in sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if p != last and not check_checkpoint(p)]
        hint = f"the newest good one is {good[0]}: copy it over last.ckpt to resume from it" if good else "no other checkpoint there is good"
        raise ConfigError(f"{last} is damaged ({problem}); {hint}")
    return last


def record(run_dir: Path, changes: list[str], step: Optional[int]) -> None:
    """One line of the run's history: when it resumed, from which step, with what changed."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_at_step": step, "changed": changes}
    with open(run_dir / HISTORY, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def first_values(run_dir: Path) -> dict[str, Any]:
    """The optimizer's settings of the run's first part where a resume changed them
    (``history.jsonl``: ``optimizer.lr: 0.05 -> 0.2``), for ``explain_step`` of its first step."""
    values: dict[str, Any] = {}
    file = run_dir / HISTORY
    for line in file.read_text().splitlines() if file.is_file() else []:
        for change in json.loads(line).get("changed", []):
            key, _, was = change.partition(": ")
            if key.startswith("optimizer.") and key not in values:
                values[key] = ast.literal_eval(was.rsplit(" -> ", 1)[0])
    return values


def plan_resume(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str], multirun: bool, say: Callable[[str], None]
) -> tuple[DictConfig, list[str], Optional[float]]:
    """(the config to go on with, what the command line changed, the objective of a sweep job that
    already finished). In a sweep, resume=true also starts jobs that never started (or left
    no checkpoint) and reruns failed ones; a finished job is not run again."""
    from microtrain.sweep_summary import objective

    metrics_file = run_dir / run_folder.METRICS
    hint = "delete it, and resume=true goes on from checkpoints/last.ckpt"
    metrics = run_folder.read_json(metrics_file, hint) if metrics_file.is_file() else {}
    status = metrics.get("status")
    if multirun:
        if status == "ok":
            say(f"resume: {run_dir.name} finished already; not run again")
            return cfg, [], objective(metrics, cfg.optimize.metric)[1]
        has_checkpoint = (run_dir / run_folder.CHECKPOINTS / "last.ckpt").is_file()
        if status in ("failed", "diverged") or not has_checkpoint or not (run_dir / run_folder.CONFIG).is_file():
            say(f"resume: {run_dir.name} {status if status in ('failed', 'diverged') else 'never started'}; starting it afresh")
            with open_dict(cfg):
                cfg.resume = False
            return cfg, [], None
    resumed, changes = resumed_config(cfg, run_dir, overrides)
    schema.check(resumed)  # a typed value (trainer.max_epochs=abc) is one line before the checks below read it
    last = last_checkpoint(run_dir)  # loads, and matches its checksum: checked before anything is written
    import torch

    saved = torch.load(last, map_location="cpu", weights_only=True)
    _check_shapes(resumed, run_dir, last, saved["state_dict"])
    step, epoch = _check_limits(resumed, saved)
    longer = any(c.startswith(("trainer.max_epochs:", "trainer.max_steps:")) for c in changes)
    if status == "ok" and not longer:  # nothing left to train: every file stays as it is
        ignored = f" (the changes take effect only with more steps: {', '.join(changes)})" if changes else ""
        say(
            f"resume: {run_dir} already finished (status ok, {metrics.get('steps', '?')} steps): nothing to do; "
            f"raise trainer.max_epochs or trainer.max_steps to train on{ignored}"
        )
        return resumed, changes, objective(metrics, resumed.optimize.metric)[1]
    say(f"resume: from step {step} (epoch {epoch}) of {run_dir}")
    return resumed, changes, None


def _check_limits(cfg: DictConfig, saved: dict[str, Any]) -> tuple[int, int]:
    """(the checkpoint's step, the epochs the run has begun): a run length below them is refused
    before anything is written. Lightning would refuse a lower trainer.max_epochs only after the
    folder's files were rewritten, and end at the restored step, past a lower trainer.max_steps."""
    step = int(saved["global_step"])
    progress = saved.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs = int(progress.get("started", saved.get("epoch", 0) + 1))  # a checkpoint mid-epoch has begun its epoch
    max_epochs, max_steps = cfg.trainer.max_epochs, cfg.trainer.max_steps
    for key, limit, reached in (("max_epochs", max_epochs, epochs), ("max_steps", max_steps, step)):
        if limit is not None and 0 <= limit < reached and not (key == "max_steps" and limit == 0):
            raise ConfigError(
                f"trainer.{key}={limit} is below the {reached} {key[4:]} this run has reached (step {step}, epoch {epochs}); "
                f"resume with trainer.{key}={reached} or more, or leave it out: nothing was written"
            )
    return step, epochs


def _check_shapes(cfg: DictConfig, run_dir: Path, last: Path, state: dict[str, Any]) -> None:
    """The checkpoint holds the model that config.yaml describes (a checkpoint copied from another
    run, or a config.yaml edited to another shape, would fail only once training starts, after
    the folder's files were rewritten): checked before anything is written."""
    from microtrain import models

    info_file = run_dir / run_folder.DATA_INFO
    if not info_file.is_file():
        return
    info = run_folder.read_json(info_file, "it is written when the run starts: train the run again, without resume=true")
    model = models.build_model(cfg.model, len(info["features"]), info["n_outputs"])
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"{last} holds another model than {run_dir / run_folder.CONFIG} describes ({detail}); "
            "nothing was written: resume with the run's own checkpoint and config"
        ) from None
