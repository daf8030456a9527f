"""What a run leaves in its folder, written so an interrupted write never corrupts an older file."""

import json
import os
import shlex
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
CONFIG = "config.yaml"
DATA_TRUTH = "data_truth.json"
DATA_INFO = "data_info.json"


def write_text_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def tensorboard_command(logdir: Path) -> str:
    return f"tensorboard --logdir {shlex.quote(str(logdir))}"
