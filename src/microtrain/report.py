"""report.png for a run or a sweep, drawn from its TensorBoard logs with TensorBoard's own reader.

A run: loss curves, per-parameter weight and gradient norms and update ratios, and the final
weight and gradient histograms of every parameter. A sweep: every job's loss curve and a bar
chart of each job's final metric, best first. No TensorBoard server is needed.
"""

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display needed

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from microtrain.run import folder as run_folder  # noqa: E402
from microtrain.errors import ConfigError  # noqa: E402
from microtrain.sweep_summary import objective  # noqa: E402


def read_run(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def is_run(folder: Path) -> bool:
    return any(folder.glob("events.out.tfevents.*"))


def write_report(folder: Path) -> Path:
    """Draw the run or sweep in ``folder`` into ``folder/report.png``; returns the path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; give a run folder or a sweep folder")
    jobs = sorted(p for p in folder.iterdir() if p.is_dir() and is_run(p))
    if is_run(folder):
        figure = run_figure(folder, read_run(folder))
    elif jobs:
        figure = sweep_figure(folder, jobs)
    else:
        raise ConfigError(f"{folder} holds no TensorBoard logs; give a run folder or a sweep folder")
    out = folder / "report.png"
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def _curve(ax: Any, events: EventAccumulator, tag: str, label: str, **style: Any) -> bool:
    if tag not in events.Tags()["scalars"]:
        return False
    points = events.Scalars(tag)
    ax.plot([p.step for p in points], [p.value for p in points], label=label, **style)
    return True


def _parameters(events: EventAccumulator) -> list[str]:
    return [t.split("/", 1)[1] for t in events.Tags()["histograms"] if t.startswith("weights/")]


def run_figure(folder: Path, events: EventAccumulator) -> Figure:
    params = _parameters(events)
    rows = 1 + math.ceil(len(params) / 2)
    figure, axes = plt.subplots(rows, 4, figsize=(18, 3.6 * rows), squeeze=False)
    figure.suptitle(f"microtrain run {folder}", fontsize=11)
    loss = axes[0][0]
    _curve(loss, events, "train_loss_step", "train (window mean)")
    _curve(loss, events, "train_loss", "train (epoch)", marker=".")
    _curve(loss, events, "val_loss", "validation (epoch)", marker=".")
    _curve(loss, events, "train_loss_optimum", "least-squares optimum", linestyle="--")
    loss.set(title="loss", xlabel="step", yscale="log")
    for ax, prefix, title in ((axes[0][1], "weight_norm", "weight norm ‖w‖"), (axes[0][2], "grad_norm", "gradient norm ‖g‖"), (axes[0][3], "update_ratio", "update ratio ‖Δw‖/‖w‖")):
        for name in params:
            _curve(ax, events, f"{prefix}/{name}", name)
        ax.set(title=title, xlabel="step", yscale="log" if prefix != "weight_norm" else "linear")
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for i, name in enumerate(params):
        for j, kind in enumerate(("weights", "grads")):
            _histogram(axes[1 + i // 2][(i % 2) * 2 + j], events, f"{kind}/{name}")
    for ax in axes.flat[4 + 2 * len(params) :]:
        ax.set_visible(False)
    figure.tight_layout()
    return figure


def _histogram(ax: Any, events: EventAccumulator, tag: str) -> None:
    last = events.Histograms(tag)[-1]
    limits, counts = list(last.histogram_value.bucket_limit), last.histogram_value.bucket
    lefts = [last.histogram_value.min] + limits[:-1]
    ax.bar(lefts, counts, width=[r - l for l, r in zip(lefts, limits)], align="edge", color="tab:blue" if tag.startswith("weights") else "tab:orange")
    ax.set(title=f"{tag} at step {last.step}", xlabel="value", ylabel="count")


def sweep_figure(folder: Path, jobs: list[Path]) -> Figure:
    figure, axes = plt.subplot_mosaic([["curves", "val"], ["bars", "bars"]], figsize=(16, 9), height_ratios=[3, 2])
    curves, val, bars = axes["curves"], axes["val"], axes["bars"]
    figure.suptitle(f"microtrain sweep {folder} ({len(jobs)} jobs)", fontsize=11)
    finals = []
    for job in jobs:
        events = read_run(job)
        _curve(curves, events, "train_loss_step", job.name)
        _curve(val, events, "val_loss", job.name, marker=".")
        metrics_file = job / run_folder.METRICS
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        name, value = objective(metrics, "auto")
        if metrics.get("status") == "ok" and math.isfinite(value):
            finals.append((value, job.name, name))
    curves.set(title="training loss per job", xlabel="step", yscale="log")
    val.set(title="validation loss per job", xlabel="step", yscale="log")
    for ax in (curves, val):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    finals.sort()
    names = [f"{'★ ' if i == 0 else ''}{job}" for i, (_, job, _) in enumerate(finals)]
    values = [v for v, _, _ in finals]
    drawn = bars.barh(names[::-1], values[::-1], color=["tab:green"] * (len(values) - 1) + ["tab:olive"] if values else [])
    bars.bar_label(drawn, labels=[f"{v:.4g}" for v in values[::-1]], padding=3, fontsize=8)
    bars.set(title=f"final {finals[0][2] if finals else 'metric'} per job (best first)")
    bars.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    return figure
