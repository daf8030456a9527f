"""Predict with a finished run: its config, data_info.json (features, standardization) and a checkpoint."""

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from microtrain import models
from microtrain.data import files
from microtrain.run import folder as run_folder
from microtrain.errors import ConfigError, DataError


def load_trained_model(run_dir: Path, checkpoint: str = "best") -> tuple[torch.nn.Module, dict]:
    """The run's model with the weights of ``checkpoints/<checkpoint>.ckpt``, and its data_info."""
    run_dir = Path(run_dir)
    weights = run_dir / run_folder.CHECKPOINTS / f"{checkpoint}.ckpt"
    if checkpoint == "best" and not weights.exists():
        weights = weights.with_name("last.ckpt")  # a run without validation keeps only its last weights
    needed = [run_dir / run_folder.CONFIG, run_dir / run_folder.DATA_INFO, weights]
    for path in needed:
        if not path.is_file():
            raise ConfigError(f"run={run_dir} has no {path.relative_to(run_dir)}; point run= at a finished run folder")
    cfg = OmegaConf.load(needed[0])
    info = json.loads(needed[1].read_text())
    model = models.build_model(cfg.model, len(info["features"]), info["n_outputs"])
    state = torch.load(needed[2], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model.eval(), info


def predict_file(run_dir: Path, path: str, output: Optional[str] = None, checkpoint: str = "best") -> Path:
    """Write one prediction per input row, in the input's row order; returns the CSV's path."""
    model, info = load_trained_model(run_dir, checkpoint)
    source = files.existing_file(path)
    if source.suffix == ".npz":
        x, _ = files.read_npz(source)
        header, rows = [], [[] for _ in range(len(x))]
    else:
        x = files.read_csv_matrix(source, info["features"])
        header, rows = files.read_csv_table(source)
    if x.shape[1] != len(info["features"]):
        raise DataError(f"{source}: x has {x.shape[1]} columns but the model was trained on {len(info['features'])} features")
    predictions = predict(model, info, x)
    out = Path(output) if output else Path(run_dir) / "predictions.csv"
    names = [f"predicted_{t}" for t in info["targets"]]
    _write_csv(out, header + names, [row + [_fmt(v) for v in p] for row, p in zip(rows, predictions.tolist())])
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, info: dict, x: np.ndarray) -> np.ndarray:
    """Apply the saved standardization and the model; class labels (argmax) for classification,
    targets in their own units for regression."""
    inputs = torch.tensor(x, dtype=torch.float32)
    if info.get("standardize"):
        inputs = (inputs - torch.tensor(info["standardize"]["mean"])) / torch.tensor(info["standardize"]["std"])
    outputs = model(inputs)
    if info["task"] == "classification":
        return outputs.argmax(dim=1, keepdim=True).numpy()
    if info.get("standardize_targets"):  # back to the targets' own units
        outputs = outputs * torch.tensor(info["standardize_targets"]["std"]) + torch.tensor(info["standardize_targets"]["mean"])
    return outputs.numpy()


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
