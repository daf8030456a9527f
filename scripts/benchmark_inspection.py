"""The inspection case of scripts/benchmark.py: what default inspection costs a run."""

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

SCRIPTS = Path(__file__).resolve().parent


def inspection_check(repeats: int, device: str = "cpu", long_steps: int = 100_000) -> dict[str, Any]:
    """What default inspection costs (issue: at most 10 % of the default run's wall clock, at most
    2 % of a long run's training time): ``scripts/train.py model=mlp`` as a subprocess with
    inspection on and off (``log.inspect=false``), sides alternating; the default run by its
    wall clock, a long run (``long_steps``, no validation) by the training time in its
    metrics.json. Also counts what the default run recorded."""
    import json as json_module
    import subprocess
    import sys

    from microtrain.monitor.tags import Events

    def command(inspect: bool, extra: list[str]) -> tuple[float, float, Optional[dict[str, int]]]:
        with tempfile.TemporaryDirectory() as folder:
            args = ["model=mlp", f"device={device}", f"log.inspect={str(inspect).lower()}", f"hydra.run.dir={folder}", *extra]
            started = time.perf_counter()
            subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *args], capture_output=True, check=True)
            wall = time.perf_counter() - started
            training = json_module.loads((Path(folder) / "metrics.json").read_text())["seconds"]
            events = Events(Path(folder)) if inspect else None
            counts = events and {
                "update_ratio_points": len(events.Scalars("update_ratio/fc1.weight")),
                "weight_histogram_slices": len(events.Histograms("weights/fc1.weight")),
                "dead_unit_points": len(events.Scalars("dead_units/fc1")),
            }
        return wall, training, counts

    long = ["data.val_fraction=0", "trainer.max_epochs=100000", f"trainer.max_steps={long_steps}"]
    times: dict[str, list[float]] = {"default_on": [], "default_off": [], "long_on": [], "long_off": []}
    recorded = None
    for _ in range(repeats):
        for inspect in (True, False):
            wall, _, counts = command(inspect, [])
            times[f"default_{'on' if inspect else 'off'}"].append(wall)
            recorded = recorded or counts
            _, training, _ = command(inspect, long)
            times[f"long_{'on' if inspect else 'off'}"].append(training)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "seconds": times,
        "median": median,
        "recorded": recorded,
        "long_steps": long_steps,
        "default_ratio": median["default_on"] / median["default_off"],
        "long_training_cost": median["long_on"] / median["long_off"] - 1,
    }


def inspection_line(result: dict[str, Any]) -> str:
    m, r = result["median"], result["recorded"]
    return (
        f"inspection: default model=mlp run {m['default_on']:.2f} s against {m['default_off']:.2f} s with log.inspect=false "
        f"(wall clock): {result['default_ratio']:.3f}×, recording {r['update_ratio_points']} update-ratio points, "
        f"{r['weight_histogram_slices']} histogram slices and {r['dead_unit_points']} dead-unit points per layer; "
        f"{result['long_steps']}-step run: training {m['long_on']:.2f} s against {m['long_off']:.2f} s: "
        f"{100 * result['long_training_cost']:+.1f} % of training time"
    )
