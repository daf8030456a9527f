"""Predict with a finished run: its config, data_info.json (features, standardization) and a checkpoint."""

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from microtrain import models
from microtrain.config.targets import check_run_config
from microtrain.data import files, tables
from microtrain.run import folder as run_folder
from microtrain.run.checksums import check_checkpoint
from microtrain.errors import ConfigError, DataError


def load_trained_model(run_dir: Path, checkpoint: str = "best", trusted: bool = False) -> tuple[torch.nn.Module, dict]:
    """The run's model with the weights of ``checkpoints/<checkpoint>.ckpt``, and its data_info."""
    run_dir, checkpoint = Path(run_dir), str(checkpoint)  # checkpoint=5 reaches here as Hydra's int
    if Path(checkpoint).name != checkpoint or checkpoint.endswith(".ckpt") or not checkpoint:
        names = ", ".join(sorted(p.stem for p in (run_dir / run_folder.CHECKPOINTS).glob("*.ckpt"))) or "none yet"
        raise ConfigError(f"checkpoint={checkpoint!r} names one of the run's checkpoints by its name, not a file: {names}")
    weights = run_dir / run_folder.CHECKPOINTS / f"{checkpoint}.ckpt"
    if checkpoint == "best" and not weights.exists():
        weights = weights.with_name("last.ckpt")  # a run without validation keeps only its last weights
    needed = [run_dir / run_folder.CONFIG, run_dir / run_folder.DATA_INFO, weights]
    for path in needed:
        if path == weights and not path.is_file() and needed[0].is_file():
            there = sorted(p.stem for p in weights.parent.glob("*.ckpt"))
            if not there:  # a run that diverged or failed before its first checkpoint
                raise ConfigError(f"{run_dir} has no checkpoint: it ended before it wrote one, so there are no weights to predict with")
            raise ConfigError(f"{run_dir} has no {path.relative_to(run_dir)}; checkpoint= names one of its checkpoints: {', '.join(there)}")
        if not path.is_file():
            raise ConfigError(f"run={run_dir} has no {path.relative_to(run_dir)}; point run= at a finished run folder")
    problem = check_checkpoint(weights)  # loads without running code, and matches its checksum
    if problem:
        others = [p for p in sorted(weights.parent.glob("*.ckpt")) if p != weights and not check_checkpoint(p)]
        hint = (
            f"{others[0].relative_to(run_dir)} is good: predict from it with checkpoint={others[0].stem}"
            if others
            else "no other checkpoint there is good"
        )
        raise ConfigError(f"{weights} is damaged ({problem}); {hint}")
    cfg = cast(DictConfig, OmegaConf.load(needed[0]))
    check_run_config(cfg, needed[0], trusted)
    info = run_folder.read_json(needed[1], "predict needs it to rebuild the run's model: train the run again")
    model = models.build_model(cfg.model, len(info["features"]), info["n_outputs"])
    state = torch.load(needed[2], map_location="cpu", weights_only=True)["state_dict"]
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    except RuntimeError as err:
        raise ConfigError(f"{weights} holds another model than {needed[0]} describes ({str(err).splitlines()[-1].strip()[:160]})") from None
    return model.eval(), info


STATUSES = ("ok", "diverged", "failed", "interrupted", "unfinished")  # metrics.json's, and a run that never wrote one


def predict_command(cfg: DictConfig) -> None:
    """``microtrain-predict``'s task: the predictions' file and notes, or one error line and exit 2."""
    import sys

    from omegaconf.errors import InterpolationResolutionError

    from microtrain.config.overrides import unresolvable
    from microtrain.console import console, error_console
    from microtrain.errors import MicrotrainError

    try:
        out, notes = predict_command_line(cfg)
    except (MicrotrainError, InterpolationResolutionError) as err:
        error_console.print(f"error: {err if isinstance(err, MicrotrainError) else unresolvable(err)}", markup=False, soft_wrap=True)
        sys.exit(2)
    for note in notes:
        console.print(f"note: {note}")
    console.print(f"predictions: {out}")


def predict_command_line(cfg: DictConfig) -> tuple[Path, list[str]]:
    """``microtrain-predict``'s settings (``conf/predict.yaml``), checked, then ``predict_file``."""
    for key, example in (
        ("run", "a finished run folder, e.g. run=outputs/2026-11-22/02-28-41"),
        ("data.path", "a CSV or .npz, e.g. data.path=new.csv"),
    ):
        if OmegaConf.select(cfg, key, throw_on_missing=False) is None:
            raise ConfigError(f"{key} is missing: name {example}")
    for key in ("probabilities", "trust_run_config"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false")
    allowed = cfg.allow_status
    allowed = [allowed] if isinstance(allowed, str) else list(allowed) if OmegaConf.is_list(allowed) else [allowed]
    if not all(isinstance(a, str) for a in allowed):
        raise ConfigError(f"allow_status={allowed!r} must be a list of statuses, e.g. '[ok,interrupted]'")
    missing = cfg.data["missing"] if "missing" in cfg.data else None  # not .get: a failing ${...} then names no key
    return predict_file(Path(cfg.run), cfg.data.path, cfg.output, cfg.checkpoint, cfg.probabilities, allowed, missing, cfg.trust_run_config)


def predict_file(
    run_dir: Path,
    path: str,
    output: Optional[str] = None,
    checkpoint: str = "best",
    probabilities: bool = False,
    allow_status: Sequence[str] = ("ok",),
    missing: Optional[str] = None,
    trusted: bool = False,
) -> tuple[Path, list[str]]:
    """Write one prediction per input row, in the input's row order; returns (the CSV, notes).

    A CSV's columns are matched by name, in any order, and encoded as in training (categories,
    missing cells); other columns are copied through. Targets need not be there. A run whose
    status is not in ``allow_status`` (a diverged, failed or interrupted one) is refused."""
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run={run_dir} is not a folder; point run= at a finished run folder")
    if not (Path(run_dir) / "config.yaml").is_file():  # a sweep's folder, an empty one, a job refused before it trained
        sweep = " (a sweep's folder: name one of its jobs' folders)" if (Path(run_dir) / "multirun.yaml").is_file() else ""
        raise ConfigError(f"run={run_dir} is not a run folder: it has no config.yaml{sweep}; point run= at a run a training wrote")
    unknown = [a for a in allow_status if a not in STATUSES]
    if unknown:
        raise ConfigError(f"allow_status names {', '.join(unknown)}, which is not a run's status; choose from {', '.join(STATUSES)}")
    metrics_file = Path(run_dir) / "metrics.json"
    hint = "its status is unknown: train the run again, or delete the file and give 'allow_status=[unfinished]'"
    status = run_folder.read_json(metrics_file, hint).get("status") if metrics_file.is_file() else "unfinished"
    if status not in allow_status:
        raise ConfigError(
            f"{run_dir}: its status is {status} (metrics.json); predict from a finished run, or allow it with 'allow_status=[ok,{status}]'"
        )
    if missing not in (None, "error", "drop", "mean"):
        raise ConfigError(f"data.missing={missing!r} must be error, drop or mean (or left out: as the run trained)")
    out = Path(output) if output else Path(run_dir) / "predictions.csv"
    _refuse_overwriting(out, Path(path), Path(run_dir))
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        why = "its folder does not exist" if not out.parent.is_dir() else "it or its folder is not writable"
        raise ConfigError(f"cannot write {out}: {why}; give output=<a writable path>")
    model, info = load_trained_model(run_dir, checkpoint, trusted)
    source = files.existing_file(path)
    notes: list[str] = []
    header: list[str]
    rows: list[list[str]]
    if source.suffix == ".npz":
        x = files.read_npz(source, need_y=False)[0]
        header, rows = [], [[] for _ in range(len(x))]
        if x.shape[1] != len(info["features"]):
            raise DataError(f"{source}: x has {x.shape[1]} columns but the model was trained on {len(info['features'])} features")
    else:
        x, header, rows, notes = _table_inputs(source, info, missing)
    holes = np.isnan(x).any(axis=1)
    outputs = predict(model, info, np.nan_to_num(x))
    classes = info.get("classes")
    if info["task"] == "classification":
        names = [f"predicted_{info['targets'][0]}"]
        cells = [[str(classes[int(i)]) if classes else str(int(i))] for i in outputs.argmax(axis=1)]
        if probabilities:
            names += [f"probability_{c}" for c in (classes or range(outputs.shape[1]))]
            cells = [row + [_fmt(p) for p in probs] for row, probs in zip(cells, _softmax(outputs))]
    else:
        if probabilities:
            raise ConfigError("probabilities=true needs a classification run; this run is a regression")
        names = [f"predicted_{t}" for t in info["targets"]]
        cells = [[_fmt(v) for v in p] for p in outputs.tolist()]
    cells = [[""] * len(c) if hole else c for c, hole in zip(cells, holes)]
    _write_csv(out, header + names, [row + c for row, c in zip(rows, cells)])
    return out, notes


def _cell(value: object) -> str:
    """A model input copied to the output as it reads: 3.0 as 3, other numbers by repr."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _refuse_overwriting(out: Path, source: Path, run_dir: Path) -> None:
    """The predictions never replace the input table, nor a file of the run (its checkpoints,
    config, metrics) other than its predictions.csv."""
    target = out.resolve()
    if source.exists() and target == source.resolve():
        raise ConfigError(f"output={out} is the input table itself; give another output=<file.csv>")
    run = run_dir.resolve()
    if target.is_relative_to(run) and target != run / "predictions.csv":
        raise ConfigError(
            f"output={out} is a file of the run {run_dir}; leave output out (it writes predictions.csv there) or give a path outside the run folder"
        )


def _table_inputs(source: Path, info: dict, missing: Optional[str] = None) -> tuple[np.ndarray, list[str], list[list[str]], list[str]]:
    """The model's inputs from a CSV, encoded as the run encoded its training table."""
    spec = info.get("columns") or {"numeric": info["features"]}  # runs on built-in data: x0, x1, ...
    columns = tables.Columns(**spec)
    used = [*columns.numeric, *columns.categorical]
    # the columns it only copies through stay text as written ("007" stays 007, not 7)
    table = tables.read(source, None, text_columns=[*columns.categorical, *(c for c in tables.header(source) if c not in used)])
    absent = [c for c in used if c not in table.columns]
    if absent:
        raise DataError(f"{source}: no column {absent[0]!r}, which the model was trained on; the file has: {', '.join(table.columns)}")
    notes = []
    extra = [c for c in table.columns if c not in used and c not in info["targets"]]
    if extra:
        notes.append(f"not model inputs, copied through: {', '.join(extra)}")
    x = tables.encode(table, columns, source)
    holes = np.isnan(x).any(axis=1)
    columns.missing = missing or columns.missing  # data.missing on the command line, else as the run trained
    if holes.any():
        if columns.missing == "mean" and columns.means is None:
            raise ConfigError(
                "data.missing=mean fills cells with the training means, which a run keeps only when it trained "
                "with data.missing=mean; use data.missing=drop (those rows get no prediction)"
            )
        if columns.missing == "mean":
            assert columns.means is not None  # refused just above
            x = tables.fill(x, columns.means)
        elif columns.missing == "drop":  # as in training: a row with a missing input gets no prediction
            notes.append(f"{int(holes.sum())} rows with a missing input get no prediction (data.missing=drop)")
        else:
            tables.handle_missing(x, np.zeros((len(x), 1)), table, source, columns, [])  # raises, naming the cell
    rows = table.astype(object).where(table.notna(), "").values.tolist()
    rows = [[_cell(v) for v in row] for row in rows]
    return x, list(table.columns), rows, notes


@torch.no_grad()
def predict(model: torch.nn.Module, info: dict, x: np.ndarray) -> np.ndarray:
    """Apply the saved standardization and the model: class scores (logits) for classification,
    targets in their own units for regression."""
    inputs = torch.tensor(x, dtype=torch.float32)
    if info.get("standardize"):
        inputs = (inputs - torch.tensor(info["standardize"]["mean"])) / torch.tensor(info["standardize"]["std"])
    outputs = model(inputs)
    if info["task"] == "regression" and info.get("standardize_targets"):  # back to the targets' own units
        outputs = outputs * torch.tensor(info["standardize_targets"]["std"]) + torch.tensor(info["standardize_targets"]["mean"])
    return outputs.numpy()


def _softmax(logits: np.ndarray) -> list[list[float]]:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).tolist()


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    partial.replace(path)
