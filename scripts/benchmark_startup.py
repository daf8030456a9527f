"""The start-up case of ``scripts/benchmark.py``: seconds from launching ``scripts/train.py`` to
its first training step, against a bare Hydra + Lightning script (``bare_lightning_step.py``)."""

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent


def startup(repeats: int) -> dict[str, Any]:
    """Seconds from launching the command to its first training step: scripts/train.py against a
    bare Hydra + Lightning script (scripts/bare_lightning_step.py), alternating."""
    import subprocess
    import sys

    from microtrain.monitor.tags import Events

    def bare() -> float:
        with tempfile.TemporaryDirectory() as folder:
            started = time.time()
            out = subprocess.run(
                [sys.executable, str(SCRIPTS / "bare_lightning_step.py"), f"hydra.run.dir={folder}"], capture_output=True, text=True, check=True
            ).stdout
        return float(out.split("first step at ")[1].split()[0]) - started

    def ours() -> float:
        with tempfile.TemporaryDirectory() as folder:
            started = time.time()
            args = ["device=cpu", "trainer.max_steps=1", "data.val_fraction=0", "trainer.enable_progress_bar=false", f"hydra.run.dir={folder}"]
            subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *args], capture_output=True, check=True)
            # TensorBoard's reader on <run>/tensorboard, by microtrain's tag names: logged as step 0 begins
            return Events(Path(folder)).Scalars("weight_norm/weight")[0].wall_time - started

    times: dict[str, list[float]] = {"bare": [], "microtrain": []}
    for _ in range(repeats):
        times["bare"].append(bare())
        times["microtrain"].append(ours())
    return {"seconds": times, "ratio": statistics.median(times["microtrain"]) / statistics.median(times["bare"])}


def startup_line(result: dict[str, Any]) -> str:
    bare, ours = result["seconds"]["bare"], result["seconds"]["microtrain"]
    return (
        f"start-up to the first training step: scripts/train.py {statistics.median(ours):.2f} s "
        f"({min(ours):.2f}–{max(ours):.2f}), bare Hydra + Lightning script {statistics.median(bare):.2f} s "
        f"({min(bare):.2f}–{max(bare):.2f}): {result['ratio']:.2f}×"
    )
