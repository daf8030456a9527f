"""Helpers the tests share: compose a config, read TensorBoard events, run a script."""

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_dir
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from microtrain.monitor.tags import Events

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def make_cfg(*overrides: str, config: str = "train") -> DictConfig:
    """The config scripts/train.py (or scripts/explain_step.py: config="explain") would run with these overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=["device=cpu", "trainer.enable_progress_bar=false", *overrides])


def read_events(logdir: Path) -> Events:
    """TensorBoard's own reader, keeping every scalar and histogram, by microtrain's names
    (``monitor.tags``): read_events(run).Scalars("val_loss") reads the tag 1_loss/val."""
    return Events(logdir)


def run_script(script: str, *args: str, cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(capsys, script: str, *args: str, cwd: Optional[Path] = None) -> tuple[int, str, str]:
    """Run a script's Hydra main in this process (as `python scripts/<script> args` would, from
    ``cwd`` if given): (exit code, stdout, stderr).

    Much faster than a subprocess (no second `import lightning`), for the long tables of cases.
    """
    import os
    import runpy

    capsys.readouterr()
    saved, here = sys.argv, Path.cwd()
    sys.argv = [str(ROOT / "scripts" / script), *args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
        os.chdir(here)
    out, err = capsys.readouterr()
    return code, out, err


def files_of(folder: Path) -> dict[str, str]:
    """Every plain file under ``folder`` (links left out) by relative path: its SHA-256, to show a folder byte-identical."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def checkpoint_weights(run: Path, name: str = "last") -> dict:
    """The weights a run's ``checkpoints/<name>.ckpt`` holds, by parameter name (``model.`` prefix kept)."""
    import torch

    return torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)["state_dict"]


class HydraKeysSeen(Callback):
    """A user's Hydra callback: writes the top-level keys of each job's ``job_return.hydra_cfg``
    into the job's folder."""

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        folder = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        (folder / "hydra_keys.txt").write_text(" ".join(job_return.hydra_cfg.keys()))
