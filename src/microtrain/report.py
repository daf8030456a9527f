"""report.png for a run or a sweep, drawn from its TensorBoard logs with TensorBoard's own reader.

A run: loss curves, per-parameter weight and gradient norms and update ratios, the final
weight and gradient histograms of every parameter, and the loss landscape around its path
(``landscape``). A sweep: every job's loss curves, the final metric against the swept number
(one line per seed) and a bar chart of the best jobs' final metric. No TensorBoard server is needed.
"""

import math
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib.cm
import matplotlib.colors
from matplotlib.figure import Figure

from microtrain.monitor.tags import Events, events_folder
from microtrain.run import folder as run_folder
from microtrain.errors import ConfigError
from microtrain.sweep_summary import objective


def is_run(folder: Path) -> bool:
    return any(events_folder(folder).glob("events.out.tfevents.*"))


def write_report(folder: str | Path) -> Path:
    """Draw the run or sweep in ``folder`` into ``folder/report.png``; returns the path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; give a run folder or a sweep folder")
    jobs = sorted(p for p in folder.iterdir() if p.is_dir() and is_run(p))
    if is_run(folder):
        figure = run_figure(folder, Events(folder))
    elif jobs:
        figure = sweep_figure(folder, jobs)
    else:
        raise ConfigError(f"{folder} holds no TensorBoard logs; give a run folder or a sweep folder")
    out = folder / "report.png"
    figure.savefig(out, dpi=90)
    return out


def _curve(ax: Any, events: Events, tag: str, label: str, **style: Any) -> bool:
    if tag not in events.Tags()["scalars"]:
        return False
    points = events.Scalars(tag)
    if len(points) == 1:  # a line of one point draws nothing (a run shorter than log.every_n_steps reads one window)
        style.setdefault("marker", ".")
    ax.plot([p.step for p in points], [p.value for p in points], label=label, **style)
    return True


def _parameters(events: Events) -> list[str]:
    return [t.split("/", 1)[1] for t in events.Tags()["histograms"] if t.startswith("weights/")]


def _figure(size: tuple[float, float], shown: bool = False) -> Figure:
    """A figure for a file, outside pyplot and drawn by Agg (the caller's backend untouched), or
    pyplot's (``shown``), which Jupyter draws inline and ``plt.show()`` opens (``Run.plot()``)."""
    if shown:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=size)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def run_figure(folder: Path, events: Events, shown: bool = False) -> Figure:
    params = _parameters(events)
    rows = 2 + math.ceil(len(params) / 2)
    figure = _figure((18, 3.6 * rows), shown)
    axes = figure.subplots(rows, 4, squeeze=False)
    figure.suptitle(f"microtrain run {folder}", fontsize=11)
    loss = axes[0][0]
    _curve(loss, events, "train_loss_step", "train (window mean)")
    _curve(loss, events, "train_loss", "train (epoch)", marker=".")
    _curve(loss, events, "val_loss", "validation (epoch)", marker=".")
    _curve(loss, events, "train_loss_optimum", "least-squares optimum", linestyle="--")
    loss.set(title="loss", xlabel="step", yscale="log")
    for ax, prefix, title in (
        (axes[0][1], "weight_norm", "weight norm ‖w‖"),
        (axes[0][2], "grad_norm", "gradient norm ‖g‖"),
        (axes[0][3], "update_ratio", "update ratio ‖Δw‖/‖w‖"),
    ):
        for name in params:
            _curve(ax, events, f"{prefix}/{name}", name)
        ax.set(title=title, xlabel="step", yscale="log" if prefix != "weight_norm" else "linear")
    for ax in [ax for ax in axes[0] if ax.get_legend_handles_labels()[0]]:
        ax.legend(fontsize=7)
    for i, name in enumerate(params):
        for j, kind in enumerate(("weights", "grads")):
            _histogram(axes[1 + i // 2][(i % 2) * 2 + j], events, f"{kind}/{name}")
    for ax in axes.flat[4 + 2 * len(params) : -4]:
        ax.set_visible(False)
    _landscape(figure, axes[-1], folder)
    _extras(axes[-1][2:], events)
    _tight(figure)
    return figure


def _tight(figure: Figure) -> None:
    """tight_layout leaves the figure's title out of its sums: a strip at the top is kept for it."""
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / figure.get_figheight()))


def _extras(row: Any, events: Events) -> None:
    """The two panels beside the landscape: the MLP's hidden layer (pre-activations and
    activations at the last histogram step), else the optimality gap and the learning rate."""
    histograms = events.Tags()["histograms"]
    layers = [t.split("/", 1)[1] for t in histograms if t.startswith("activations/")]
    if layers:
        for ax, kind in zip(row, ("preactivations", "activations")):
            ax.set_visible(True)
            _histogram(ax, events, f"{kind}/{layers[0]}")
        return
    for ax, (tag, title) in zip(row, (("optimality_gap", "optimality gap (loss − least-squares optimum)"), ("lr", "learning rate"))):
        if _curve(ax, events, tag, tag):
            ax.set_visible(True)
            ax.set(title=title, xlabel="step", yscale="log" if tag == "optimality_gap" else "linear")


def _landscape(figure: Figure, row: Any, folder: Path) -> None:
    """The last row: the loss landscape with the path drawn on it (two panels wide)."""
    from microtrain.errors import MicrotrainError
    from microtrain.landscape import landscape

    for ax in row[2:]:
        ax.set_visible(False)  # _extras may fill them
    gs = row[0].get_gridspec()
    row[0].remove()
    row[1].remove()
    ax = figure.add_subplot(gs[-1, :2])
    try:
        view = landscape(folder)
    except (MicrotrainError, OSError) as err:
        ax.set_axis_off()
        ax.set_title("loss landscape")
        import textwrap

        ax.text(0.02, 0.5, textwrap.fill(f"not drawn: {err}", 90), transform=ax.transAxes, fontsize=8, va="center")
        return
    import numpy as np

    loss = view.loss.double().clamp_min(1e-12).numpy()
    levels = np.geomspace(loss.min(), loss.max(), 25) if loss.max() > loss.min() else 10
    contours = ax.contourf(view.a.numpy(), view.b.numpy(), loss, levels=levels, cmap="viridis", norm=matplotlib.colors.LogNorm())
    bar = figure.colorbar(contours, ax=ax, label="training loss")
    # a few plain numbers, not 1.17309×10¹
    bar.set_ticks(np.geomspace(loss.min(), loss.max(), 5))  # type: ignore[arg-type]  # matplotlib's stub says Sequence; it takes an array
    bar.set_ticklabels([f"{v:.3g}" for v in np.geomspace(loss.min(), loss.max(), 5)])
    bar.minorticks_off()
    path = view.path.numpy()
    ax.plot(path[:, 0], path[:, 1], color="white", linewidth=1.2, marker=".", markersize=3)
    ax.plot(*path[0], marker="o", color="red", label="start")
    ax.plot(*path[-1], marker="*", color="orange", markersize=12, label="end")
    ax.set(title=view.title, xlabel=view.labels[0], ylabel=view.labels[1])
    ax.legend(fontsize=7)


def _histogram(ax: Any, events: Events, tag: str) -> None:
    last = events.Histograms(tag)[-1]
    limits, counts = list(last.histogram_value.bucket_limit), last.histogram_value.bucket
    if last.histogram_value.num <= 1 or last.histogram_value.min == last.histogram_value.max:
        # one number (fc2.bias of a one-output MLP): a stem at its value, not a bar as wide as the panel
        value = last.histogram_value.min
        ax.stem([value], [last.histogram_value.num], linefmt="tab:blue" if tag.startswith("weights") else "tab:orange")
        ax.set_xlim(value - max(abs(value), 1e-3) * 0.5, value + max(abs(value), 1e-3) * 0.5)
        ax.set(title=f"{tag} at step {last.step}: {value:.4g}", xlabel="value", ylabel="count")
        return
    lefts = [last.histogram_value.min] + limits[:-1]
    color = {"weights": "tab:blue", "grads": "tab:orange"}.get(tag.split("/")[0], "tab:purple")
    ax.bar(lefts, counts, width=[right - left for left, right in zip(lefts, limits)], align="edge", color=color)
    ax.set(title=f"{tag} at step {last.step}", xlabel="value", ylabel="count")


def sweep_figure(folder: Path, jobs: list[Path]) -> Figure:
    figure = _figure((16, 10))
    axes = figure.subplot_mosaic([["curves", "val"], ["swept", "bars"]], height_ratios=[3, 3])
    curves, val, bars = axes["curves"], axes["val"], axes["bars"]
    # every job the sweep ran, those refused before their first event too (their metrics.json says so)
    results = {p: run_folder.read_json(p / run_folder.METRICS, "run the job again") for p in folder.iterdir() if (p / run_folder.METRICS).is_file()}
    results |= {job: {} for job in jobs if job not in results}
    not_ok = Counter(str(r.get("status", "unfinished")) for r in results.values() if r.get("status") != "ok")
    counted = "".join(f", {n} {status}" for status, n in sorted(not_ok.items()))
    figure.suptitle(f"microtrain sweep {folder} ({len(results)} jobs{counted})", fontsize=11)
    finals = []
    metric, mode = _optimize(jobs)  # the sweep's own ranking, as its summary.csv's
    colors = _job_colors(figure, [curves, val], jobs)
    for job in jobs:
        events = Events(job)
        _curve(curves, events, "train_loss_step", job.name, linewidth=0.8, color=colors.get(job.name))
        _curve(val, events, "val_loss", job.name, marker="." if len(jobs) <= 12 else None, linewidth=0.8, color=colors.get(job.name))
        metrics = results[job]
        name, value = objective(metrics, metric)
        if metrics.get("status") == "ok" and math.isfinite(value):
            finals.append((value, job.name, name))
    curves.set(title=f"training loss, every job ({len(jobs)})", xlabel="step", yscale="log")
    val.set(title=f"validation loss, every job ({len(jobs)})", xlabel="step", yscale="log")
    for ax in (curves, val):
        if ax.get_legend_handles_labels()[0] and len(jobs) <= 12 and not colors:  # more lines than a legend can name
            ax.legend(fontsize=7)
    finals.sort(key=lambda final: final[0], reverse=mode == "max")
    _swept_curve(axes["swept"], jobs, {job: (value, name) for value, job, name in finals})
    shown = finals[:20]
    swept = swept_values(jobs)  # a job is named by what it sweeps, not its whole folder name
    label = lambda job: " ".join(f"{k}={v}" for k, v in sorted(swept.get(job, {}).items())) or job  # noqa: E731
    names = [f"{'★ ' if i == 0 else ''}{label(job)}" for i, (_, job, _) in enumerate(shown)]
    values = [v for v, _, _ in shown]
    drawn = bars.barh(names[::-1], values[::-1], color=["tab:green"] * (len(values) - 1) + ["tab:olive"] if values else [])
    bars.bar_label(drawn, labels=[f"{v:.4g}" for v in values[::-1]], padding=3, fontsize=8)
    more = f", the best {len(shown)} of {len(finals)}" if len(finals) > len(shown) else ""
    bars.set(title=f"final {finals[0][2] if finals else 'metric'} per job (best first{more})")
    bars.tick_params(axis="y", labelsize=7)
    _tight(figure)
    return figure


def _optimize(jobs: list[Path]) -> tuple[str, str]:
    """``optimize.metric`` and ``optimize.mode`` of the sweep (its first job's config.yaml that has them)."""
    import yaml

    for job in jobs:
        try:
            optimize = (yaml.load((job / run_folder.CONFIG).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("optimize")
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(optimize, dict):
            return str(optimize.get("metric", "auto")), str(optimize.get("mode", "min"))
    return "auto", "min"


def _job_colors(figure: Figure, axes: list[Any], jobs: list[Path]) -> dict[str, Any]:
    """Each job's line coloured by its swept number (the learning rate when it is swept), with a
    colour bar naming it, so 20 lines read as one sweep; {} when nothing numeric is swept."""
    swept = swept_values(jobs)
    numeric = sorted({k for values in swept.values() for k, v in values.items() if not math.isnan(_number(v))})
    if not numeric:
        return {}
    key = "optimizer.lr" if "optimizer.lr" in numeric else numeric[0]
    values = {job: _number(v.get(key)) for job, v in swept.items() if not math.isnan(_number(v.get(key)))}
    low, high = min(values.values()), max(values.values())
    log = low > 0 and high / low > 10
    norm = matplotlib.colors.LogNorm(low, high) if log else matplotlib.colors.Normalize(low, high if high > low else low + 1)
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis")
    for ax in axes:
        figure.colorbar(mappable, ax=ax, label=key)
    return {job: mappable.to_rgba(value) for job, value in values.items()}  # type: ignore[arg-type]  # matplotlib's stub: an array; a number works


def swept_values(jobs: list[Path]) -> dict[str, dict[str, str]]:
    """{job folder name: {key: value}} of the overrides that differ between the jobs (.hydra/overrides.yaml)."""
    import yaml

    overrides = {}
    for job in jobs:
        listed = job / ".hydra" / "overrides.yaml"
        pairs = [o.split("=", 1) for o in (yaml.safe_load(listed.read_text()) or [])] if listed.exists() else []
        overrides[job.name] = {k.lstrip("+~"): v for k, v in (p for p in pairs if len(p) == 2)}
    keys = {k for values in overrides.values() for k in values}
    swept = {k for k in keys if len({values.get(k) for values in overrides.values()}) > 1}
    return {job: {k: v for k, v in values.items() if k in swept} for job, values in overrides.items()}


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _swept_curve(ax: Any, jobs: list[Path], finals: dict[str, tuple[float, str]]) -> None:
    """Final metric against the swept number (the learning rate when it is swept), log x axis,
    one line per value of the other swept keys (one per seed): the learning-rate curve."""
    swept = swept_values(jobs)
    numeric = sorted({k for values in swept.values() for k, v in values.items() if not math.isnan(_number(v))})
    if not numeric or not finals:
        ax.set_visible(False)
        return
    x_key = "optimizer.lr" if "optimizer.lr" in numeric else numeric[0]
    lines: dict[str, list[tuple[float, float]]] = {}
    for job, (value, _) in finals.items():
        values = swept.get(job, {})
        x = _number(values.get(x_key))
        if math.isnan(x):
            continue
        label = " ".join(f"{k}={v}" for k, v in sorted(values.items()) if k != x_key) or "all jobs"
        lines.setdefault(label, []).append((x, value))
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
    metric = next(iter(finals.values()))[1]
    positive = all(p[0] > 0 for points in lines.values() for p in points)
    ax.set(title=f"final {metric} against {x_key}", xlabel=x_key, ylabel=metric, xscale="log" if positive else "linear", yscale="log")
    if len(lines) <= 12:
        ax.legend(fontsize=7)
