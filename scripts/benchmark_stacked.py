"""The stacked-sweep case of ``scripts/benchmark.py``: a 64-job grid (16 learning rates × 4 seeds)
of the 3→64→1 MLP, batch 32, on the default data with default inspection, trained by Hydra's
basic launcher, by joblib with 2 workers, and by ``hydra/launcher=stacked`` (eager and compiled),
against the same grid written by hand in torch alone (``scripts/benchmark_handwritten_sweep.py``).

Every side is the real command (``scripts/train.py -m ...``) at two run lengths; the difference
of the two, divided by the difference in steps, is the per-step time of the grid with start-up
(imports, Hydra composing 64 configs, Lightning's set-up per job, compiling) cancelled:
* basic: the jobs' own training seconds (``metrics.json``) summed, run one after another;
* joblib: the command's wall clock (its jobs overlap in 2 processes);
* stacked: the group's training seconds less its compile seconds (``metrics.json``).
The commands' wall clocks are reported too.
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LEARNING_RATES = [f"{0.001 * 10 ** (i / 7.5):.4g}" for i in range(16)]  # 1e-3 to 1e-1, log-spaced
SEEDS = "0,1,2,3"
EPOCHS = (4, 40)  # 25 steps an epoch on the default data: 100 and 1000 steps
SIDES = {
    "basic": [],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "stacked, eager": ["hydra/launcher=stacked", "loop.compile=false"],
    "stacked, compiled": ["hydra/launcher=stacked", "loop.compile=true"],
}


def grid_run(side: list[str], epochs: int, device: str) -> dict[str, Any]:
    """One sweep of the grid: its wall clock, steps, and training seconds from the jobs' metrics."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "-m",
            *side,
            "model=mlp",
            f"optimizer.lr={','.join(LEARNING_RATES)}",
            f"seed={SEEDS}",
            f"trainer.max_epochs={epochs}",
            f"device={device}",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={folder}",
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(side) or 'basic'} failed: {done.stderr.strip().splitlines()[-1:]}")
        metrics = [json.loads(p.read_text()) for p in Path(folder).glob("*/metrics.json")]
    if len(metrics) != 64 or any(m["status"] != "ok" for m in metrics):
        raise RuntimeError(f"{' '.join(side) or 'basic'}: {len(metrics)} jobs, not 64 finished ones")
    stacked = "stacked" in metrics[0]
    if stacked:  # one group: every job records the group's time
        training = max(m["seconds"] - m.get("compile_seconds", 0.0) for m in metrics)
    else:
        training = sum(m["seconds"] for m in metrics)
    return {"wall": wall, "steps": metrics[0]["steps"], "training": training, "stacked": stacked}


def handwritten_run(steps: int) -> dict[str, Any]:
    """The same grid as a torch-only script (``scripts/benchmark_handwritten_sweep.py``): its wall clock."""
    command = [sys.executable, str(ROOT / "scripts" / "benchmark_handwritten_sweep.py"), "--steps", str(steps)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the hand-written script failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"wall": time.perf_counter() - started, "steps": steps}


def stacked_check(repeats: int, device: str) -> dict[str, Any]:
    """Per grid step (all 64 jobs one step) for every side; the sides alternate in each repeat,
    the hand-written script among them."""
    runs: dict[str, list[tuple[dict, dict]]] = {name: [] for name in SIDES}
    handwritten: list[tuple[dict, dict]] = []
    for _ in range(repeats):
        for name, side in SIDES.items():
            short, long = (grid_run(side, epochs, device) for epochs in EPOCHS)
            runs[name].append((short, long))
            if name == "basic":  # between microtrain's sides, so a change in the machine's load shows in both
                handwritten.append(tuple(handwritten_run(epochs * 25) for epochs in EPOCHS))
    result: dict[str, Any] = {"jobs": 64, "epochs": list(EPOCHS), "sides": {}}
    for name, pairs in runs.items():
        per_step = []
        for short, long in pairs:
            elapsed = long["wall"] - short["wall"] if name.startswith("joblib") else long["training"] - short["training"]
            per_step.append(elapsed / (long["steps"] - short["steps"]))
        result["sides"][name] = {
            "grid_step_ms": statistics.median(per_step) * 1e3,
            "model_step_us": statistics.median(per_step) / 64 * 1e6,
            "wall_s": [round(statistics.median(p[i]["wall"] for p in pairs), 1) for i in (0, 1)],
        }
    basic, joblib = result["sides"]["basic"]["grid_step_ms"], result["sides"]["joblib, 2 workers"]["grid_step_ms"]
    hand_walls = [statistics.median(p[i]["wall"] for p in handwritten) for i in (0, 1)]
    hand_step = statistics.median((long["wall"] - short["wall"]) / (long["steps"] - short["steps"]) for short, long in handwritten)
    result["handwritten"] = {"wall_s": [round(w, 2) for w in hand_walls], "grid_step_ms": hand_step * 1e3}
    for side in result["sides"].values():
        side["vs_basic"] = basic / side["grid_step_ms"]
        side["vs_joblib"] = joblib / side["grid_step_ms"]
        # the whole command against the script (lower is better; 1.0 = as fast as writing it by hand)
        side["vs_handwritten_wall"] = [side["wall_s"][i] / hand_walls[i] for i in (0, 1)]
        side["vs_handwritten_step"] = side["grid_step_ms"] / result["handwritten"]["grid_step_ms"]
    return result


def stacked_table(result: dict[str, Any]) -> str:
    steps = [e * 25 for e in result["epochs"]]
    hand = result["handwritten"]
    lines = [
        f"stacked sweep: {result['jobs']} jobs (16 learning rates x 4 seeds), MLP 3->64->1, batch 32, default data and inspection",
        f"| launcher | per grid step | per model-step | vs basic | vs joblib | command wall clock, {steps[0]} / {steps[1]} steps |"
        " against the hand-written script (wall, wall; per step) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, side in result["sides"].items():
        ratios = side["vs_handwritten_wall"]
        lines.append(
            f"| {name} | {side['grid_step_ms']:.2f} ms | {side['model_step_us']:.1f} us | {side['vs_basic']:.1f}x | "
            f"{side['vs_joblib']:.1f}x | {side['wall_s'][0]} s / {side['wall_s'][1]} s | "
            f"{ratios[0]:.2f}x, {ratios[1]:.2f}x; {side['vs_handwritten_step']:.2f}x |"
        )
    lines.append(
        f"| hand-written vmap script (torch only) | {hand['grid_step_ms']:.2f} ms | {hand['grid_step_ms'] / 64 * 1e3:.1f} us | | | "
        f"{hand['wall_s'][0]} s / {hand['wall_s'][1]} s | 1.00x |"
    )
    return "\n".join(lines)
