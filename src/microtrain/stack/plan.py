"""What ``hydra/launcher=stacked`` does with a sweep's jobs: check them, skip the finished ones of
a resumed sweep, group the rest, and train each group stacked (``stack.train``)."""

import json
import math
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, Optional

import torch
from omegaconf import DictConfig, open_dict

from microtrain.config import schema
from microtrain.console import one_line
from microtrain.errors import MicrotrainError
from microtrain.run import folder as run_folder
from microtrain.run import interrupt
from microtrain.stack.groups import describe, group_jobs
from microtrain.sweep_summary import objective
from microtrain.engine.trainer import trainer_arguments

MEMORY_SHARE = 0.25  # of the free memory (the GPU's, or the host's) one stacked group may take

Result = dict[str, Any]


def run_stacked(
    cfgs: list[DictConfig],
    folders: list[Path],
    max_jobs: Optional[int],
    console: Any,
    overrides: Optional[list[list[str]]] = None,
    train_chunks: Optional[Callable[[list[tuple]], list[Any]]] = None,
    unresolved: frozenset[int] = frozenset(),
) -> tuple[list[Optional[Result]], set[int]]:
    """([each job's result, or None for a job to run alone through its task function], the jobs
    of a resumed sweep that never started, which start afresh). ``train_chunks``: trains the
    groups' chunks elsewhere, all at once (``_trained_here``'s arguments each), returning for each
    (its jobs' metrics, seconds); without it they train here, one after another."""
    results: list[Optional[Result]] = [None] * len(cfgs)
    fresh: set[int] = set()
    candidates, resumed_at = [], []
    refused: dict[int, str] = {}
    for index, (cfg, folder) in enumerate(zip(cfgs, folders)):
        try:
            if index in unresolved:  # an interpolation of its config fails (${oc.env:UNSET}): alone, it fails as a basic launcher's job
                raise MicrotrainError("does not resolve")
            schema.check(cfg)
            trainer_arguments(cfg.trainer)
            run_folder.refuse_links(folder)
            if not cfg.resume and run_folder.earlier_run(folder) and not cfg.get("overwrite"):
                raise MicrotrainError("holds a run")  # refused as a solo run refuses it, with its message
        except MicrotrainError:
            refused[index] = "its config is refused (its error follows)"
            continue
        step = 0
        if cfg.resume:
            done = _finished(folder, cfg)
            if done is not None:
                results[index] = done
                continue
            last = folder / run_folder.CHECKPOINTS / "last.ckpt"
            if last.is_file():
                step = _saved_step(last)
            else:
                fresh.add(index)
                with open_dict(cfg):
                    cfg.resume = False
        candidates.append(index)
        resumed_at.append(step)
    skipped = sum(r is not None for r in results)
    if skipped:
        console.print(f"resume: {skipped} job(s) already finished (status ok) are not run again")
    if going_on := sorted(step for step in resumed_at if step > 0):
        console.print(
            f"resume: {len(going_on)} job(s) go on from their last.ckpt, from step {going_on[0]}"
            + (f" to {going_on[-1]}" if going_on[-1] != going_on[0] else "")
        )
    groups, alone = group_jobs([cfgs[i] for i in candidates], resumed_at, candidates)
    alone = {candidates[i]: why for i, why in alone.items()} | refused
    for group in groups:
        group.jobs = [candidates[i] for i in group.jobs]
    for line in describe(groups, alone, len(cfgs) - skipped, [" ".join(o) for o in overrides] if overrides else None):
        console.print(line, markup=False)
    chunks: list[tuple[str, list[int]]] = []  # (the group's name, its jobs), at most as many jobs as fit in memory
    for number, group in enumerate(groups):
        fit = _jobs_that_fit(cfgs[group.jobs[0]], len(group.jobs))
        limit = int(min(max_jobs or math.inf, fit))
        parts = [group.jobs[start : start + limit] for start in range(0, len(group.jobs), limit)]
        if len(parts) > 1:
            why = f"hydra.launcher.max_jobs={max_jobs}" if max_jobs == limit else "what fits in memory"
            console.print(f"group {number + 1} trains in {len(parts)} parts of at most {limit} jobs ({why})")
        chunks += [(f"{number + 1}" + (f", part {p + 1}" if len(parts) > 1 else ""), part) for p, part in enumerate(parts)]
    work = [
        (
            [cfgs[i] for i in chunk],
            [folders[i] for i in chunk],
            [bool(cfgs[i].resume) for i in chunk],
            [overrides[i] if overrides else [] for i in chunk],
        )
        for _, chunk in chunks
    ]
    if train_chunks is None:  # here, one after another
        outcomes: list[Any] = []
        for (_, chunk), args in zip(chunks, work):
            if interrupt.stop_signal() is not None:  # the sweep was interrupted: these jobs never start
                outcomes.append(None)
                continue
            started = time.perf_counter()
            outcomes.append((_trained_here(*args), time.perf_counter() - started))
            _report(console, chunks[len(outcomes) - 1], outcomes[-1], folders, cfgs, results)
    else:  # elsewhere, all at once (a cluster: stack.submitit)
        outcomes = train_chunks(work) if work else []
        for numbered, outcome in zip(chunks, outcomes):
            _report(console, numbered, outcome, folders, cfgs, results)
    for (_, chunk), outcome in zip(chunks, outcomes):
        if outcome is None:
            for i in chunk:  # an earlier run in its folder (overwrite=true, resume=true) stays as it is
                kept = run_folder.earlier_run(folders[i]) is not None
                results[i] = {"status": "interrupted", "objective": math.inf, **({"kept": True} if kept else {})}
                if not kept:
                    failed(folders[i], "not started: the sweep was interrupted", status="interrupted")
    return results, fresh


def _trained_here(cfgs: list[DictConfig], folders: list[Path], resume: list[bool], overrides: list[list[str]]) -> list[Result]:
    """One chunk of a group trained stacked in this process; each job's metrics (a failure: each job failed)."""
    from microtrain.stack.train import train_group

    started = time.time() - 1.0  # a job's folder this group opened has a config.yaml written since (the file clock is coarse)
    try:
        return train_group(cfgs, folders, resume, overrides)
    except MicrotrainError as err:
        return [failed(folder, str(err), since=started) for folder in folders]
    except Exception as err:  # noqa: BLE001 -- in a sweep one broken group must not stop the others
        return [failed(folder, one_line(err), since=started) for folder in folders]


def _report(
    console: Any,
    chunk: tuple[str, list[int]],
    outcome: Optional[tuple[list[Result], float]],
    folders: list[Path],
    cfgs: list[DictConfig],
    results: list[Optional[Result]],
) -> None:
    """The chunk's line, its jobs' errors, and their results for the launcher."""
    if outcome is None:
        return
    (name, jobs), (metrics, seconds) = chunk, outcome
    ok = sum(m["status"] == "ok" for m in metrics)
    steps = sorted({m["steps"] for m in metrics if "steps" in m})  # early stopping ends jobs apart; an interrupted job has none
    trained = f"{steps[0]} steps each, " if len(steps) == 1 else f"{steps[0]}-{steps[-1]} steps, " if steps else ""
    compiling = next((f", {m['compile_seconds']:.1f} s of it compiling" for m in metrics if "compile_seconds" in m), "")  # as a solo run's line
    console.print(f"group {name}: {len(jobs)} job{'s' if len(jobs) > 1 else ''} stacked, {trained}{ok} ok, {seconds:.1f} s{compiling}")
    seen = next((m["stacked"]["inspections"] for m in metrics if "inspections" in m.get("stacked", {})), None)
    if seen:  # not silently sparser than its solo runs' grid
        console.print(
            f"  inspection: {seen[0]} points, {seen[1]} with histograms, where auto planned {seen[2]} and {seen[3]} (every {seen[4]} and {seen[5]} "
            f"steps): its grid widened within log.inspect_budget of the group's time; log.inspect_every_n_steps={seen[4]} gives each job its solo run's grid"
        )
    for i, m in zip(jobs, metrics):
        if m["status"] != "ok":
            console.print(f"error: job #{i}: {m['error']}", markup=False)
        # kept: refused before its folder was touched, which holds an earlier run (the launcher records nothing there)
        results[i] = {"status": m["status"], "objective": objective(m, cfgs[i].optimize.metric)[1], **({"kept": True} if m.get("kept") else {})}


def _finished(folder: Path, cfg: DictConfig) -> Optional[Result]:
    metrics_file = folder / run_folder.METRICS
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("status") != "ok":
        return None
    return {"status": "ok", "objective": objective(metrics, cfg.optimize.metric)[1], "skipped": True}


def _saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 -- a damaged checkpoint: the job resumes alone and says so
        return -1


def failed(folder: Path, message: str, status: str = "failed", since: Optional[float] = None) -> Result:
    """The job failed: its metrics.json says so, unless its folder holds an earlier run the group
    had not opened (written before ``since``), which stays whole (``kept``), as a solo run's."""
    metrics = {"status": status, "error": message}
    config = folder / run_folder.CONFIG
    if since is not None and run_folder.earlier_run(folder) and not (config.is_file() and config.stat().st_mtime >= since):
        return metrics | {"kept": True}
    folder.mkdir(parents=True, exist_ok=True)
    run_folder.write_json_atomic(folder / run_folder.METRICS, metrics)
    return metrics


def _jobs_that_fit(cfg: DictConfig, wanted: int) -> int:
    """How many jobs fit in MEMORY_SHARE of the free memory of the group's device
    (``models.training_bytes`` a job, as a solo run is checked)."""
    from microtrain import device, models

    features = cfg.data.get("n_features") or 64
    outputs = cfg.data.get("n_outputs") or 16
    width = 8 if str(cfg.device.precision) in ("64", "64-true") else 4
    job_bytes = models.training_bytes(cfg.model, features, outputs, cfg.data.batch_size or 4096, width)
    free = device.available_bytes("cuda" if torch.cuda.is_available() and cfg.device.type != "cpu" else "cpu")
    return max(1, min(wanted, int(MEMORY_SHARE * free // job_bytes)))
