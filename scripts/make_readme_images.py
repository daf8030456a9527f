"""Remake the README's pictures from real runs: python scripts/make_readme_images.py

Writes docs/images/report_run.png (scripts/report.py on the default MLP run),
docs/images/report_sweep.png (on a 2×2 sweep) and, rendered from a real TensorBoard server by
Debian's chromium headless (apt-get install chromium), tensorboard_custom_scalars.png (the
Custom Scalars tab of that run), tensorboard_activations.png (its activation histograms) and
tensorboard_hparams.png (the sweep's HParams table).
"""

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def screenshot_tensorboard(logdir: Path, shots: dict[str, Path]) -> None:
    """{URL fragment after #: picture} of one TensorBoard server on ``logdir``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        for fragment, out in shots.items():
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run(
                    [
                        "chromium",
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--virtual-time-budget=15000",
                        "--disable-background-networking",
                        "--no-first-run",
                        f"--user-data-dir={profile}",
                        "--window-size=1400,1000",
                        f"--screenshot={out}",
                        f"http://127.0.0.1:{port}/?darkMode=false#{fragment}",
                    ],
                    check=True,
                    capture_output=True,
                )
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        run_dir, sweep_dir = Path(work) / "run", Path(work) / "sweep"
        run("scripts/train.py", "model=mlp", "device=cpu", f"hydra.run.dir={run_dir}")
        run("scripts/report.py", str(run_dir))
        shutil.copy(run_dir / "report.png", IMAGES / "report_run.png")
        run("scripts/train.py", "-m", "optimizer.lr=0.01,0.1", "model=linear,mlp", "device=cpu", f"hydra.sweep.dir={sweep_dir}")
        run("scripts/report.py", str(sweep_dir))
        shutil.copy(sweep_dir / "report.png", IMAGES / "report_sweep.png")
        screenshot_tensorboard(
            run_dir,
            {"custom_scalars": IMAGES / "tensorboard_custom_scalars.png", "histograms&tagFilter=activations": IMAGES / "tensorboard_activations.png"},
        )
        screenshot_tensorboard(sweep_dir, {"hparams": IMAGES / "tensorboard_hparams.png"})
    print(f"pictures: {IMAGES}")


if __name__ == "__main__":
    main()
