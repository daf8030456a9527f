"""``microtrain-train --help``: every config group with its options, and every key of the
default run (or of the options chosen beside --help, model=mlp) with the comment its YAML file gives it. Made from the shipped YAML files when asked
(a Hydra help template filled by the ``microtrain_help`` resolver), so it cannot drift from them."""

import sys
from importlib.resources import files
from typing import Any, cast

from omegaconf import OmegaConf

HEADERS = {
    "train": """microtrain-train [group=option ...] [key=value ...]   (also python -m microtrain, scripts/train.py)
Train a linear model or a two-layer MLP and see what its weights and gradients do.
Examples:
  microtrain-train model=mlp optimizer.lr=0.1
  microtrain-train -m optimizer.lr=0.01,0.1 model=linear,mlp      (a sweep)
  microtrain-train --config-dir=my_configs model=wide             (your own configs)
Sweeps (-m) run on hydra/launcher=basic (one job after another, the default), stacked (jobs that
differ only in hyper-parameters as one stacked model), joblib, submitit_local, submitit_slurm,
stacked_submitit_local or stacked_slurm; hparams_search=optuna|optuna_stacked searches.
""",
    "explain": """microtrain-explain [the same group=option and key=value as microtrain-train]   (also scripts/explain_step.py)
Explain one training step on the first batch: per parameter the value, gradient, update and new
value, the optimizer's rule and the gradient checked, the chain rule layer by layer; step.json.
Examples:
  microtrain-explain +experiment=mlp_3_3_1_by_hand
  microtrain-explain model=mlp optimizer=adam
  microtrain-explain hydra.run.dir=<run folder>      (that run's first step, with its own config)
""",
    "predict": """microtrain-predict run=<run folder> data.path=<table.csv or arrays.npz> [key=value ...]   (also scripts/predict.py)
Predict with a finished run: one prediction per input row, in the input's row order, written as CSV.
Examples:
  microtrain-predict run=outputs/2026-12-05/09-30-00 data.path=new_rows.csv
  microtrain-predict run=<run folder> data.path=new_rows.csv output=predictions.csv probabilities=true
  microtrain-predict run=<run folder> data.path=new_rows.csv data.missing=drop   (rows with an empty cell get none)
""",
}
SKIP = ("hydra", "experiment", "hparams_search")  # Hydra's own groups; recipes are listed by name only


def help_text(command: str = "train") -> str:
    """The help page; ``$`` is doubled because Hydra fills the page as a ``string.Template``."""
    conf = files("microtrain.conf")
    top = (conf / f"{command}.yaml").read_text()
    if command == "predict":  # no config groups: the run folder says what was trained
        text = "\n".join([HEADERS[command], "Keys (conf/predict.yaml), with their comments:", _without_hydra(top).split("\ndefaults:")[0]])
        return text.replace("$", "$$")
    sections = [
        HEADERS[command],
        "Config groups (group=option):",
        "$APP_CONFIG_GROUPS",
        f"Keys of conf/{command}.yaml, with their comments:",
        _without_hydra(top),
    ]
    defaults = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.create(top)))["defaults"]
    # an option chosen on the command line (--help model=mlp) shows its own keys, not the default's
    chosen = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith(("+", "~", "-")) and "." not in a.split("=")[0])
    for entry in defaults:
        if not isinstance(entry, dict) or not entry:
            continue
        group, option = next(iter(entry.items()))
        if option is None or group.startswith("override") or group in SKIP or not isinstance(option, str):
            continue
        option = chosen[group] if (conf / group / f"{chosen.get(group)}.yaml").is_file() else option
        sections.append(f"{group}={option} (conf/{group}/{option}.yaml):\n" + _indented((conf / group / f"{option}.yaml").read_text()))
    sections.append("Other options' keys: their files in conf/<group>/; explain_step's in conf/explain.yaml.")
    return "\n".join(sections).replace("$", "$$").replace("$$APP_CONFIG_GROUPS", "$APP_CONFIG_GROUPS")


def _without_hydra(text: str) -> str:
    """train.yaml up to its hydra: section (Hydra's run folders and launchers, not training keys)."""
    return text.split("\nhydra:")[0].rstrip() + "\n"


def _indented(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def register() -> None:
    if not OmegaConf.has_resolver("microtrain_help"):
        OmegaConf.register_new_resolver("microtrain_help", help_text)
