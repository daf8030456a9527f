"""``trajectory.pt``: a run's weights at its inspected steps, the path ``report.png``'s loss
landscape (``landscape.py``) is drawn around. Kept by ``monitor.parameters`` for a solo run and
by ``stack.inspect`` for each stacked job, by the same rule."""

from pathlib import Path
from typing import Optional

import torch

from microtrain.run import folder as run_folder

TRAJECTORY = "trajectory.pt"
EVERY_POINT = 10_000  # parameters: up to this many, the weights of every inspected step are kept
LIMIT = 1_000_000  # up to this many, those of the histogram steps; above it, none


def keeps(parameters: int, drawing: bool) -> bool:
    """Whether an inspection keeps the weights: every one of a small model, the histogram ones
    (``drawing``) of a larger one, none above LIMIT."""
    return parameters <= EVERY_POINT or (parameters <= LIMIT and drawing)


def save(file: Path, names: list[str], points: list[tuple[int, torch.Tensor]], resumed_at: int = 0) -> None:
    """The weights (flat, float32) at these steps, after those of the run's first part when it
    was resumed at step ``resumed_at``."""
    if resumed_at and file.is_file():
        try:
            saved = torch.load(file, weights_only=True)
            points = [(int(s), w) for s, w in zip(saved["steps"], saved["weights"]) if s < resumed_at] + points
        except Exception as err:  # noqa: BLE001 -- a damaged file loses the first part's path, not the run
            print(f"note: {file} could not be read ({type(err).__name__}); it now holds the steps from {resumed_at} on", flush=True)
    if points:
        saved = {"names": names, "steps": torch.tensor([s for s, _ in points]), "weights": torch.stack([w for _, w in points])}
        run_folder.write_atomic(file, lambda partial: torch.save(saved, partial))


def load(run_dir: Path) -> Optional[dict]:
    file = Path(run_dir) / TRAJECTORY
    return torch.load(file, weights_only=True) if file.is_file() else None
