"""Speed of microtrain's training against a plain PyTorch loop, measured side by side in one process.

Both sides train the same model (same initial weights) on the same data, optimizer and batch
order. Per-step time is the difference of two run lengths over the difference of their steps,
so set-up cancels; the sides alternate in each repeat, so a busy machine slows both alike."""

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from microtrain.data.batches import SeededOrder


@dataclass
class Case:
    name: str
    n_features: int
    hidden: Optional[int]  # None = the linear model
    n_outputs: int
    batch_size: int
    steps: tuple[int, int]  # the two run lengths whose difference is timed
    threads: int  # small models gain nothing from a second thread here
    rows: Optional[int] = None  # None: epochs of at least 64 batches and 32 768 rows

    @property
    def overrides(self) -> list[str]:
        model = ["model=linear"] if self.hidden is None else ["model=mlp", f"model.hidden={self.hidden}"]
        rows = self.rows or max(self.batch_size * 64, 32768)
        return [
            *model,
            "data=synthetic",
            f"data.n_samples={rows}",
            f"data.n_features={self.n_features}",
            f"data.n_outputs={self.n_outputs}",
            f"data.batch_size={self.batch_size}",
            "data.val_fraction=0",
            "optimizer=sgd",
            "optimizer.lr=0.01",
            "trainer.enable_progress_bar=false",
            "trainer.max_epochs=100000",
        ]


# Run lengths: the timed difference is 1-5 s a side, long enough for percent-level ratios here.
CASES = [
    Case("linear 3→2, batch 10", 3, None, 2, 10, (300, 10300), 1),
    Case("MLP 3→64→1, batch 32", 3, 64, 1, 32, (300, 10300), 1),
    Case("MLP 256→1024→256, batch 1024", 256, 1024, 256, 1024, (20, 420), 2),
    # the default synthetic set: epochs of 32 steps, so per-epoch costs (checkpoint, loops) show
    Case("MLP 3→64→1, batch 32, 1 000 rows", 3, 64, 1, 32, (300, 10300), 1, rows=1000),
]


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, seed: int) -> float:
    """The hand-written loop microtrain is measured against; returns seconds for ``steps`` steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    sampler = SeededOrder(len(x), True, seed)  # the batch order microtrain uses: randperm per (seed, epoch)
    batches_per_epoch = -(-len(x) // batch_size)
    started = time.perf_counter()
    for step in range(steps):
        epoch, position = divmod(step, batches_per_epoch)
        if position == 0:
            sampler.set_epoch(epoch)
            order = sampler.order()
        index = order[position * batch_size : (position + 1) * batch_size]
        loss = loss_fn(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if x.is_cuda:
        torch.cuda.synchronize()  # GPU work is asynchronous: time it once it has finished
    return time.perf_counter() - started


COMPILE_SECONDS: list[float] = []  # of every loop.compile run, reported beside the table


def microtrain_run(overrides: list[str], steps: int) -> tuple[float, nn.Module]:
    """Seconds of ``trainer.fit`` for ``steps`` optimizer steps through the public API and configs."""
    from hydra import compose, initialize_config_dir

    from microtrain.training import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"trainer.max_steps={steps}"])
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(cfg, Path(run_dir))
    # compiling (loop.compile) is reported apart: it would not cancel between the two run lengths
    compiling = result.metrics.get("compile_seconds", 0.0)
    if compiling:
        COMPILE_SECONDS.append(compiling)
    return result.metrics["seconds"] - compiling, result.module.model


def per_step(run: Callable[[int], float], steps: tuple[int, int]) -> float:
    """Seconds per step from two run lengths, so set-up time cancels."""
    short, long = run(steps[0]), run(steps[1])
    return (long - short) / (steps[1] - steps[0])


def plain_side(case: Case, steps: int, device: str = "cpu") -> tuple[float, nn.Module]:
    from hydra import compose, initialize_config_dir

    from microtrain.engine.build import prepare

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        prepared = prepare(compose("train", overrides=case.overrides))
    model = prepared.module.model.to(device)
    x, y = (t.to(device) for t in prepared.splits.train)
    return plain_loop(model, x, y, case.batch_size, steps, seed=0), model.cpu()


def measure(case: Case, repeats: int, device: str = "cpu", compiled: bool = True) -> dict[str, Any]:
    """Alternating repeats of the plain loop, microtrain, microtrain with inspection off and
    (``compiled``) microtrain with ``loop.compile=true``."""
    torch.set_num_threads(case.threads)
    extra = [f"device={device}"]
    sides: dict[str, Callable[[int], float]] = {
        "plain": lambda n: plain_side(case, n, device)[0],
        "microtrain": lambda n: microtrain_run(case.overrides + extra, n)[0],
        "inspection_off": lambda n: microtrain_run(case.overrides + extra + INSPECTION_OFF, n)[0],
    }
    if compiled:
        sides["compiled"] = lambda n: microtrain_run(case.overrides + extra + ["loop.compile=true"], n)[0]
    COMPILE_SECONDS.clear()
    for run in sides.values():
        run(case.steps[0])  # warm-up: first-call costs of torch and Lightning
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            times[name].append(per_step(run, case.steps))
    same = _same_weights(case, extra) if device == "cpu" else None  # bitwise equality is a CPU promise
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    rates = {k: [1 / t for t in v] for k, v in times.items()}
    compile_seconds = list(COMPILE_SECONDS)
    drift = _compiled_drift(case, extra) if compiled else None
    return {
        "case": case.name,
        "device": device,
        "threads": case.threads,
        "batch_size": case.batch_size,
        "steps_per_s": rates,
        "same_weights": same,
        "gpu_memory_peak_mib": peak,
        "compile_seconds": compile_seconds,
        "compiled_max_abs_diff": drift,
    }


def _compiled_drift(case: Case, extra: list[str], steps: int = 1000) -> float:
    """Largest |compiled − eager| weight after ``steps`` steps: rounding only, the same math."""
    _, eager = microtrain_run(case.overrides + extra, steps)
    _, compiled = microtrain_run(case.overrides + extra + ["loop.compile=true"], steps)
    return max((a - b).abs().max().item() for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()))


def _same_weights(case: Case, extra: list[str]) -> bool:
    """Both sides trained bitwise-equal weights: the same math, not only the same speed."""
    _, plain_model = plain_side(case, case.steps[0])
    _, microtrain_model = microtrain_run(case.overrides + extra, case.steps[0])
    return all(torch.equal(a, b) for a, b in zip(plain_model.state_dict().values(), microtrain_model.state_dict().values()))


INSPECTION_OFF = ["log.histograms=false", "log.inspect_every_n_steps=1000000000"]
CONF = Path(__file__).resolve().parents[1] / "conf"  # the harness lives beside scripts/, outside the package


SCRIPTS = CONF.parent / "scripts"


COMMAND_ARGS = ["model=mlp", "data.val_fraction=0", "trainer.max_epochs=100000"]


def command_check(repeats: int, device: str = "cpu", steps: tuple[int, int] = (300, 10300), extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The issues' command-line check: seconds per step of ``scripts/train.py model=mlp [extra]``
    on its default data (subprocesses, wall clock, two run lengths differenced so start-up and
    compiling cancel) against the plain loop on the same data, on one thread: what train.py's
    device.threads=auto picks for this model, and the plain loop's faster setting too (0.91x on
    two, measured)."""
    import subprocess
    import sys

    def command(n: int) -> float:
        with tempfile.TemporaryDirectory() as folder:
            args = [*COMMAND_ARGS, *extra, f"device={device}", f"trainer.max_steps={n}", f"hydra.run.dir={folder}"]
            started = time.perf_counter()
            subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *args], capture_output=True, check=True)
            return time.perf_counter() - started

    case = Case("default", 3, 64, 1, 32, steps, 1, rows=1000)
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"plain": [], "command": []}
    for _ in range(repeats):
        times["plain"].append(per_step(lambda n: plain_side(case, n, device)[0], steps))
        times["command"].append(per_step(command, steps))
    ratio = statistics.median(times["plain"]) / statistics.median(times["command"])
    return {"args": [*COMMAND_ARGS, *extra], "device": device, "steps": steps, "seconds_per_step": times, "ratio": ratio}


def command_line(result: dict[str, Any]) -> str:
    plain, ours = (result["seconds_per_step"][k] for k in ("plain", "command"))
    return (
        f"scripts/train.py {' '.join(result['args'])} (default data, wall clock, steps "
        f"{result['steps'][0]} vs {result['steps'][1]}): {1e6 * statistics.median(ours):.0f} µs/step "
        f"({1e6 * min(ours):.0f}–{1e6 * max(ours):.0f}); plain loop {1e6 * statistics.median(plain):.0f} µs/step "
        f"({1e6 * min(plain):.0f}–{1e6 * max(plain):.0f}): {result['ratio']:.2f}×"
    )


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    m = {k: statistics.median(v) for k, v in result["steps_per_s"].items()}
    samples = {k: v * result["batch_size"] for k, v in m.items()}
    return result | {
        "median_steps_per_s": m,
        "ratio": m["microtrain"] / m["plain"],
        "samples_per_s": samples,
        "inspection_cost": 1 - m["microtrain"] / m["inspection_off"],
    }


def compiled_table(results: list[dict[str, Any]]) -> str:
    """``loop.compile=true`` beside eager microtrain and the plain loop."""
    lines = [
        "| case | plain loop, steps/s | microtrain eager | microtrain compiled (min–max) | compiled / plain | compile s (min–max) | max abs diff vs eager, 1000 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "compiled" not in r["steps_per_s"]:
            continue
        med, c, s = r["median_steps_per_s"], r["steps_per_s"]["compiled"], r["compile_seconds"] or [float("nan")]
        lines.append(
            f"| {r['case']} | {med['plain']:,.0f} | {med['microtrain']:,.0f} | {med['compiled']:,.0f} ({min(c):,.0f}–{max(c):,.0f}) | "
            f"{med['compiled'] / med['plain']:.2f}× | {statistics.median(s):.1f} ({min(s):.1f}–{max(s):.1f}) | {r['compiled_max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def _same(same: Optional[bool]) -> str:
    return "n/a (GPU)" if same is None else "yes" if same else "NO"


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | plain loop, steps/s (min–max) | microtrain, steps/s (min–max) | ratio | microtrain samples/s | inspection cost | same weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, m = r["steps_per_s"]["plain"], r["steps_per_s"]["microtrain"]
        lines.append(
            f"| {r['case']} | {statistics.median(p):,.0f} ({min(p):,.0f}–{max(p):,.0f}) | "
            f"{statistics.median(m):,.0f} ({min(m):,.0f}–{max(m):,.0f}) | {r['ratio']:.2f}× | "
            f"{r['samples_per_s']['microtrain']:,.0f} | {100 * r['inspection_cost']:+.1f} % | {_same(r['same_weights'])} |"
        )
    return "\n".join(lines)
