"""A finished run seen from Python: ``microtrain.train`` and ``microtrain.load`` return one."""

import html
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np


class Run:
    """A run folder: ``.metrics`` (metrics.json), ``.config`` (config.yaml), ``.history`` (every
    scalar TensorBoard holds, a step a row), ``.predict(x)`` and ``.plot()`` (report.png's panels)."""

    def __init__(self, folder: Any):
        self.folder = Path(folder)

    @property
    def metrics(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: status, final losses, test metrics, steps, seconds, ..."""
        path = self.folder / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {"status": "unfinished"}

    @cached_property
    def config(self) -> Any:
        """The run's whole config (``config.yaml``), as an OmegaConf DictConfig."""
        from omegaconf import OmegaConf

        return OmegaConf.load(self.folder / "config.yaml")

    @property
    def history(self) -> Any:
        """A pandas DataFrame: one row per logged step, one column per scalar (``train_loss_step``,
        ``val_loss``, ``grad_norm/fc1.weight``, ...), read back with TensorBoard's own reader;
        empty where a scalar was not logged at that step."""
        import pandas as pd

        from microtrain.monitor.tags import Events

        events = Events(self.folder)
        rows: dict[int, dict[str, float]] = {}
        for name in events.Tags()["scalars"]:
            for point in events.Scalars(name):
                rows.setdefault(point.step, {})[name] = point.value  # a resumed run's redone step: its last value
        frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
        frame.index.name = "step"
        return frame[sorted(frame.columns)]

    def predict(self, x: Any, checkpoint: str = "best") -> Any:
        """Predictions for ``x``: a NumPy array of the model's inputs (rows x features, in the
        training's feature order), or a pandas DataFrame whose columns are matched by name and
        encoded as ``predict.py`` encodes a CSV's (categories, standardization). Regression: the
        targets in their own units (rows x targets); classification: the predicted class of each row."""
        import pandas as pd

        from microtrain.predict import load_trained_model, predict

        model, info = load_trained_model(self.folder, checkpoint)
        if isinstance(x, pd.DataFrame):
            x = _encoded(x, info)
        inputs = np.asarray(x, dtype=np.float64)
        if inputs.ndim != 2 or inputs.shape[1] != len(info["features"]):
            from microtrain.errors import DataError

            raise DataError(
                f"x has shape {list(inputs.shape)} but the model takes rows of {len(info['features'])} features ({', '.join(info['features'])})"
            )
        outputs = predict(model, info, inputs)
        if info["task"] != "classification":
            return outputs
        labels = outputs.argmax(axis=1)
        return np.asarray(info["classes"], dtype=object)[labels] if info.get("classes") else labels

    def plot(self) -> Any:
        """The panels of ``report.png`` (losses, norms, update ratios, histograms, landscape) as a
        matplotlib Figure; Jupyter shows it inline."""
        from microtrain.report import read_run, run_figure

        return run_figure(self.folder, read_run(self.folder))

    def __repr__(self) -> str:
        m = self.metrics
        losses = ", ".join(f"{k}={m[k]:.4g}" for k in ("train_loss", "val_loss") if isinstance(m.get(k), (int, float)))
        return f"Run({str(self.folder)!r}, status={m.get('status')}{', ' + losses if losses else ''}, steps={m.get('steps')})"

    def _repr_html_(self) -> str:
        m = self.metrics
        shown = {k: v for k, v in m.items() if isinstance(v, (int, float, str)) and k not in ("resume",)}
        cells = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(f'{v:.6g}' if isinstance(v, float) else str(v))}</td></tr>" for k, v in shown.items()
        )
        return f"<b>microtrain run</b> <code>{html.escape(str(self.folder))}</code><table>{cells}</table>"


def _encoded(frame: Any, info: dict) -> np.ndarray:
    """A DataFrame's model inputs, as ``predict.py`` encodes a CSV's: written to a CSV and read back the same way."""
    import tempfile

    from microtrain.predict import _table_inputs

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.csv"
        frame.to_csv(path, index=False)
        x, _, _, _ = _table_inputs(path, info)
    return x
