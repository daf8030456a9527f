"""The loss landscape around a run's path, for ``report.png``.

The run's weights at its inspected steps (``trajectory.pt``, written by
``monitor.parameters``) and its own model, loss and training split, rebuilt from its
``config.yaml``:

* a model with two parameters (``model=linear`` 1->1 with a bias): the loss over the plane of
  those two parameters, with the path drawn in their own coordinates;
* any other model: the plane through the final weights spanned by the two main directions
  (PCA) of the path's offsets from them, the path projected onto it (Li et al. 2018,
  "Visualizing the Loss Landscape of Neural Nets", section 7). The share of the path's
  variance each direction explains is part of its axis label: a plane that explains most of
  it shows the path faithfully.

All grid points are evaluated at once with ``torch.func.vmap`` over ``functional_call``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor
from torch.func import vmap

GRID = 41  # points per axis
MARGIN = 0.35  # the grid reaches this share of the path's extent beyond it on each side
MAX_ROWS = 4096


@dataclass
class Landscape:
    a: Tensor  # [GRID] first coordinate
    b: Tensor  # [GRID] second coordinate
    loss: Tensor  # [GRID, GRID], loss[j, i] at (a[i], b[j])
    path: Tensor  # [T, 2] the path in these coordinates
    labels: tuple[str, str]
    title: str


def landscape(run_dir: Path) -> Landscape:
    """The landscape of a finished run (raises MicrotrainError when its data cannot be rebuilt)."""
    from omegaconf import DictConfig, OmegaConf

    from microtrain import losses, models
    from microtrain.config.targets import check_run_config
    from microtrain.data.prepare import prepare_data
    from microtrain.errors import ConfigError
    from microtrain.monitor import curvature
    from microtrain.monitor import trajectory as trajectories

    trajectory = trajectories.load(run_dir)
    if trajectory is None or len(trajectory["steps"]) < 2:
        raise ConfigError("the run kept no weight trajectory (log.inspect=false, or a model over 1M parameters)")
    cfg = cast(DictConfig, OmegaConf.load(Path(run_dir) / "config.yaml"))
    check_run_config(cfg, Path(run_dir) / "config.yaml")
    # the model, loss and data only: drawing a report builds no optimizer, scheduler or callback
    dataset, splits, info = prepare_data(cfg)
    model = models.build_model(cfg.model, dataset.x.shape[1], info["n_outputs"]).float()
    loss_fn = losses.build_loss(cfg.loss)
    x, y = splits.train
    x, y = x[:MAX_ROWS].float(), y[:MAX_ROWS]
    y = y.float() if y.is_floating_point() else y
    names = list(trajectory["names"])  # the model's, in its order
    weights = trajectory["weights"].float()
    loss_at, _ = curvature.flat_loss(model, loss_fn, x, y)

    final = weights[-1]
    if weights.shape[1] == 2:
        origin, directions = torch.zeros(2), torch.eye(2)
        path = weights
        labels = (names[0], names[1])
        title = f"loss surface over ({names[0]}, {names[1]}) with the path of {len(path)} inspected steps"
    else:
        offsets = weights - final
        _, singular, vh = torch.linalg.svd(offsets.double(), full_matrices=False)
        directions = vh[:2].float()
        if len(directions) < 2:  # a path along one line: any orthogonal second direction
            extra = torch.randn(weights.shape[1], generator=torch.Generator().manual_seed(0))
            extra -= (extra @ directions[0]) * directions[0]
            directions = torch.stack([directions[0], extra / extra.norm()])
        share = (singular**2 / (singular**2).sum().clamp_min(1e-30)).tolist() + [0.0, 0.0]
        origin, path = final, offsets @ directions.T
        labels = (f"PCA direction 1 ({share[0]:.0%} of the path)", f"PCA direction 2 ({share[1]:.0%})")
        title = f"loss around the final weights, path of {len(path)} inspected steps projected"
    low, high = path.min(0).values, path.max(0).values
    pad = (high - low).clamp_min(1e-3) * MARGIN
    a = torch.linspace(float(low[0] - pad[0]), float(high[0] + pad[0]), GRID)
    b = torch.linspace(float(low[1] - pad[1]), float(high[1] + pad[1]), GRID)
    a, b = _through(a, path[-1, 0]), _through(b, path[-1, 1])  # the final weights are a grid point
    grid_b, grid_a = torch.meshgrid(b, a, indexing="ij")
    points = origin + grid_a.reshape(-1, 1) * directions[0] + grid_b.reshape(-1, 1) * directions[1]
    with torch.no_grad():
        loss = torch.cat([vmap(loss_at)(chunk) for chunk in points.split(256)]).reshape(GRID, GRID)
    return Landscape(a, b, loss, path, labels, title)


def _through(values: Tensor, point: Tensor) -> Tensor:
    """``values`` shifted by less than one spacing so that one of them is ``point``."""
    return values + (point - values[(values - point).abs().argmin()])
