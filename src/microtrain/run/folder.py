"""What a run leaves in its folder, written so an interrupted write never corrupts an older file."""

import json
import os
import shlex
from pathlib import Path
from typing import Any, Callable

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
CONFIG = "config.yaml"
DATA_TRUTH = "data_truth.json"
DATA_INFO = "data_info.json"


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` the file as ``<name>.partial``, then rename it over ``path``: a rename is atomic
    on POSIX, so a crash or kill mid-write leaves the old file whole. No fsync: it cost ~1 ms a
    write, and a tiny model checkpoints every epoch of a few ms. Every file of a run goes here."""
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # a failed write (a full disk) leaves no .partial behind


def write_all_atomic(files: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Several files that belong together (the checkpoints of a stacked group's jobs): every
    ``.partial`` first, then the renames, so a kill leaves them all of one moment but for the
    microseconds of the renames."""
    partials = [(path, path.with_name(path.name + ".partial")) for path, _ in files]
    try:
        for (_, partial), (_, write) in zip(partials, files):
            write(partial)
        for path, partial in partials:
            os.replace(partial, path)
    finally:
        for _, partial in partials:
            partial.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda partial: partial.write_text(text))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def tensorboard_command(logdir: Path) -> str:
    return f"tensorboard --logdir {shlex.quote(str(logdir))}"


def write_hydra_record(run_dir: Path, hydra: Any, task_cfg: Any) -> None:
    """``.hydra/``: Hydra's record of the job (its overrides, Hydra's config, the job's config),
    written by microtrain once the run is valid (``hydra.output_subdir: null`` stops Hydra from
    writing it at the job's start, before any check: a rejected re-run would rewrite it)."""
    from omegaconf import OmegaConf

    record = Path(run_dir) / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(hydra.overrides.task))))
    write_text_atomic(record / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})))
    if task_cfg is not None:
        write_text_atomic(record / "config.yaml", OmegaConf.to_yaml(task_cfg))
