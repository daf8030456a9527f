"""A finished run seen from Python: ``microtrain.train`` and ``microtrain.load`` return one."""

import html
import re
from functools import cached_property
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from microtrain.run import folder as run_folder


class Run:
    """A run folder: ``.metrics`` (metrics.json), ``.config`` (config.yaml), ``.history`` (every
    scalar TensorBoard holds, a step a row), ``.predict(x)`` and ``.plot()`` (report.png's panels)."""

    def __init__(self, folder: Any):
        self.folder = Path(folder).absolute()  # the same run after the caller's os.chdir

    @property
    def metrics(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: status, final losses, test metrics, steps, seconds, ..."""
        path = self.folder / "metrics.json"
        return run_folder.read_json(path, "the run's status is unknown") if path.is_file() else {"status": "unfinished"}

    @cached_property
    def config(self) -> Any:
        """The run's whole config (``config.yaml``), as an OmegaConf DictConfig."""
        from omegaconf import OmegaConf

        from microtrain.errors import ConfigError

        if not (self.folder / "config.yaml").is_file():
            raise ConfigError(f"{self.folder} has no config.yaml: it is not a run folder (or its run was refused before it began)")
        return OmegaConf.load(self.folder / "config.yaml")

    @property
    def history(self) -> Any:
        """A pandas DataFrame: one row per logged step, one column per scalar (``train_loss_step``,
        ``val_loss``, ``grad_norm/fc1.weight``, ...), read back with TensorBoard's own reader;
        empty where a scalar was not logged at that step."""
        import pandas as pd

        from microtrain.monitor.tags import Events

        events = Events(self._logged())
        rows: dict[int, dict[str, float]] = {}
        for name in events.Tags()["scalars"]:
            for point in events.Scalars(name):
                rows.setdefault(point.step, {})[name] = point.value  # a resumed run's redone step: its last value
        frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
        frame.index.name = "step"
        return frame[sorted(frame.columns)]

    def predict(self, x: Any, checkpoint: str = "best", missing: Optional[str] = None, allow_status: Sequence[str] = ("ok",)) -> Any:
        """Predictions for ``x``: a NumPy array of the model's inputs (rows x features, in the
        training's feature order), or a pandas DataFrame whose columns are matched by name and
        encoded as ``predict.py`` encodes a CSV's (categories, standardization; ``missing``: drop
        or mean for its empty cells, as ``data.missing``, a dropped row predicting NaN). Regression:
        the targets in their own units (rows x targets); classification: the predicted class of
        each row. A run whose status is not in ``allow_status`` is refused, as by ``predict.py``."""
        import pandas as pd

        from microtrain.errors import ConfigError, DataError
        from microtrain.predict import load_trained_model, predict

        status = self.metrics.get("status", "unfinished")
        if status not in allow_status:
            raise ConfigError(
                f"{self.folder}: its status is {status} (metrics.json); predict from a finished run, or allow it with allow_status=('ok', '{status}')"
            )
        model, info = load_trained_model(self.folder, checkpoint)
        if isinstance(x, pd.DataFrame):
            inputs = _encoded(x, info, missing)
        else:
            try:
                inputs = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise DataError(f"x must be numbers, rows x features (or a pandas DataFrame with the features' columns): {err}") from None
            if bad := np.argwhere(~np.isfinite(inputs)).tolist():
                raise DataError(
                    f"x{bad[0]} is {inputs[tuple(bad[0])]}; remove or fill non-finite values (a DataFrame's empty cells may take missing='mean')"
                )
        if inputs.ndim != 2 or inputs.shape[1] != len(info["features"]):
            raise DataError(
                f"x has shape {list(inputs.shape)} but the model takes rows of {len(info['features'])} features ({', '.join(info['features'])})"
                + ("; one row is x[None] or [x]" if inputs.ndim == 1 else "")
            )
        dropped = np.isnan(inputs).any(axis=1)  # missing='drop': no prediction for that row
        outputs = predict(model, info, np.nan_to_num(inputs))
        if info["task"] != "classification":
            outputs[dropped] = np.nan
            return outputs
        labels = outputs.argmax(axis=1)
        named = np.asarray(info["classes"], dtype=object)[labels] if info.get("classes") else labels.astype(object)
        named[dropped] = np.nan  # as a regression's dropped row (pandas reads it as missing)
        return named if dropped.any() or info.get("classes") else labels

    def plot(self) -> Any:
        """The panels of ``report.png`` (losses, norms, update ratios, histograms, landscape) as a
        matplotlib Figure; Jupyter shows it inline."""
        from microtrain.monitor.tags import Events
        from microtrain.report import run_figure

        return run_figure(self.folder, Events(self._logged()), shown=True)

    def _logged(self) -> Path:
        """The folder, once it holds TensorBoard logs (a run folder's ``tensorboard/``)."""
        from microtrain.errors import ConfigError
        from microtrain.report import is_run

        if not is_run(self.folder):
            raise ConfigError(f"{self.folder} holds no TensorBoard logs (tensorboard/events.out.tfevents.*): give the folder a run wrote")
        return self.folder

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


def _encoded(frame: Any, info: dict, missing: Optional[str]) -> np.ndarray:
    """A DataFrame's model inputs, as ``predict.py`` encodes a CSV's: written to a CSV and read
    back the same way; an error names the DataFrame's row (by position) and ``missing=``."""
    import tempfile

    from microtrain.errors import ConfigError, DataError
    from microtrain.predict import _table_inputs

    if missing not in (None, "error", "drop", "mean"):
        raise ConfigError(f"missing={missing!r} must be error, drop or mean (or None: as the run trained)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.csv"
        frame.to_csv(path, index=False)
        try:
            x, _, _, _ = _table_inputs(path, info, missing)
        except (ConfigError, DataError) as err:  # the CSV's line numbers count its header: row 2 is the DataFrame's first
            text = str(err).replace(f"{path}: ", "x: ").replace("data.missing=", "missing=").replace("the file has:", "the DataFrame has:")
            raise type(err)(re.sub(r"\brow (\d+)", lambda m: f"row {int(m.group(1)) - 2} (by position)", text)) from None
    return x
