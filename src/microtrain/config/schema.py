"""The schema of every config key: its type and range, checked once, before anything starts.

The defaults live in the YAML files of ``conf/`` and nowhere else; this module holds every check.
``check(cfg)`` walks the composed config against the tables below and raises one ``ConfigError``
naming the first bad key: a wrong type, a value out of range, a key the section does not have
(a typo such as ``+log.histogram=false`` would otherwise be silently ignored), or a missing one.
Code after the check reads ``cfg.section.key`` directly: no ``.get(key, default)`` elsewhere.
``trainer.*`` is Lightning's: its keys are checked against ``lightning.Trainer``'s signature when
the Trainer is built (``engine.trainer``), and Lightning checks the values of the ones not listed
here. Callbacks other than early stopping check their own arguments when built.
"""

import math
import re
from contextlib import suppress
from collections.abc import Callable, Mapping
from typing import Any, cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from microtrain.data.bundled import BUNDLED
from microtrain.device import PRECISIONS
from microtrain.errors import ConfigError
from microtrain.losses import LOSSES
from microtrain.models import ACTIVATIONS, INIT_SCHEMES

Rule = Callable[[Any, str], None]


def _fail(key: str, value: Any, wanted: str) -> None:
    if isinstance(value, str) and wanted.startswith("is not a") and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
        wanted += f" (this is text, as ${{oc.env:...}} gives; for a number from the environment: {key}=\"'${{oc.decode:${{oc.env:NAME}}}}'\")"
    raise ConfigError(f"{key}={repr(value) if isinstance(value, str) else value} {wanted}")


def integer(minimum: int | None = None, maximum: int | None = None, *, none: bool = False, auto: bool = False) -> Rule:
    def rule(value: Any, key: str) -> None:
        if (none and value is None) or (auto and value == "auto"):
            return
        if isinstance(value, bool) or not isinstance(value, int):
            also = " or auto" if auto else " or null" if none else ""
            example = minimum if minimum is not None and minimum >= 1 else 10
            _fail(key, value, f"is not a whole number{also}; set it like {key}={example}")
        if minimum is not None and value < minimum:
            _fail(key, value, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            _fail(key, value, f"must be at most {maximum}")

    return rule


def number(
    minimum: float | None = None, maximum: float | None = None, *, positive: bool = False, below: float | None = None, none: bool = False
) -> Rule:
    def rule(value: Any, key: str) -> None:
        if none and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, value, f"is not a number; set it like {key}=0.1")
        if not math.isfinite(value):
            _fail(key, value, "is not finite; give a finite number")
        if positive and value <= 0:
            _fail(key, value, "must be greater than 0")
        if minimum is not None and value < minimum:
            _fail(key, value, f"must be at least {float(minimum)}")
        if maximum is not None and value > maximum:
            _fail(key, value, f"must be at most {float(maximum)}")
        if below is not None and value >= below:
            _fail(key, value, f"must be below {below}")

    return rule


def fraction(value: Any, key: str) -> None:
    """A share of the rows, in [0, 1)."""
    number()(value, key)
    if not 0 <= value < 1:
        _fail(key, value, "must be in [0, 1); use 0 for none")


def boolean(*extra: str) -> Rule:
    def rule(value: Any, key: str) -> None:
        if not isinstance(value, bool) and value not in extra:
            _fail(key, value, f"must be true or false{''.join(' or ' + e for e in extra)}")

    return rule


def choice(*options: str, as_text: bool = False) -> Rule:
    def rule(value: Any, key: str) -> None:
        value = str(value) if as_text else value
        if value not in options:
            _fail(key, value, f"is not one of: {', '.join(options)}")

    return rule


def text(*, none: bool = False) -> Rule:
    def rule(value: Any, key: str) -> None:
        if not (isinstance(value, str) or (none and value is None)):
            _fail(key, value, "must be a text value" + (" or null" if none else ""))

    return rule


def anything(value: Any, key: str) -> None:
    """Checked where it is used (data rows, init values, file paths, column names)."""


def columns_or(*words: str) -> Rule:
    """One of ``words``, or a list of column names."""

    def rule(value: Any, key: str) -> None:
        if value in words or (not isinstance(value, (str, Mapping)) and hasattr(value, "__len__")):
            return
        _fail(key, value, f"must be {' or '.join(words)} or a list of columns, like {key}='[sex,smoker]'")

    return rule


def pair_of(rule: Rule) -> Rule:
    def check_pair(value: Any, key: str) -> None:
        if isinstance(value, (str, Mapping)) or not hasattr(value, "__len__") or len(value) != 2:
            _fail(key, value, f"must be a list of two values, like {key}=[0.9,0.999]")
        for i, item in enumerate(value):
            rule(item, f"{key}[{i}]")

    return check_pair


SPLITS = {
    "batch_size": integer(1, none=True),  # null = the whole training split in one batch
    "val_fraction": fraction,
    "test_fraction": fraction,
    "split_seed": integer(0),
    "standardize": boolean(),
    "standardize_targets": boolean(),
}
DATA: dict[str, dict[str, Rule]] = {
    "synthetic": {"n_samples": integer(2), "n_features": integer(1), "n_outputs": integer(1), "noise": number(0), "seed": integer(0)},
    "inline": {"x": anything, "y": anything},
    "csv": {
        "path": anything,
        "target": anything,
        "features": anything,
        "exclude": anything,
        "categorical": columns_or("auto", "none"),
        "missing": choice("error", "drop", "mean"),
        "sep": text(none=True),
    },
    "npz": {"path": anything},
    **{name: {} for name in BUNDLED},
}
LINEAR = {
    "in_features": integer(1, none=True),
    "out_features": integer(1, none=True),
    "bias": boolean(),
    "init": choice(*INIT_SCHEMES),
    "init_gain": number(positive=True),
    "init_std": number(positive=True),
    "init_values": anything,  # names and shapes checked against the model (models.set_values)
}
MODEL = {"linear": LINEAR, "mlp": {**LINEAR, "hidden": integer(1), "activation": choice(*ACTIVATIONS)}}
LOSS = {name: {"delta": number(positive=True)} if name == "huber" else {} for name in LOSSES}
# Keys of torch.optim classes checked here when present; others go to the class, which refuses
# an argument it does not take (optimizers.OptimizerFactory turns that into one line).
OPTIMIZER = {
    "_target_": text(),
    "_partial_": boolean(),
    "lr": number(positive=True),
    "momentum": number(0, below=1),
    "dampening": number(0, 1),
    "weight_decay": number(0),
    "nesterov": boolean(),
    "betas": pair_of(number(0, below=1)),
    "eps": number(positive=True),
    "amsgrad": boolean(),
    "alpha": number(0, 1),
    "centered": boolean(),
    "lr_decay": number(0),
    "initial_accumulator_value": number(0),
}
# Keys of the schedulers in conf/scheduler/ (StepLR, CosineAnnealingLR; ReduceLROnPlateau's when it
# is the target: stepped on val_loss, which only falls, so mode min); others go to the class.
SCHEDULER = {"_target_": text(), "_partial_": boolean(), "step_size": integer(1), "gamma": number(positive=True)}
SCHEDULER |= {"T_max": integer(1), "eta_min": number(0)}
PLATEAU = {"mode": choice("min"), "factor": number(positive=True, below=1), "patience": integer(0), "threshold": number(0), "cooldown": integer(0)}
PLATEAU |= {"threshold_mode": choice("rel", "abs"), "min_lr": number(0), "eps": number(0)}
# The Trainer arguments the YAML sets (their types; other arguments are Lightning's to check), and
# the three that microtrain applies itself (engine.bypass).
TRAINER = {
    "max_epochs": integer(-1),
    "max_steps": integer(-1),
    "num_nodes": integer(1),
    "strategy": text(),
    "enable_progress_bar": boolean(),
    "deterministic": boolean("warn"),
    "gradient_clip_val": number(0, none=True),
    "gradient_clip_algorithm": choice("norm", "value"),
    "accumulate_grad_batches": integer(1),
}
SECTIONS: dict[str, dict[str, Rule]] = {
    "device": {"type": choice("auto", "cpu", "cuda"), "precision": choice(*PRECISIONS, as_text=True), "threads": integer(1, auto=True)},
    "loop": {"steps_per_call": integer(1, auto=True), "compile": boolean("auto")},
    "checkpoint": {"every_n_steps": integer(1, none=True), "budget": number(0, 1)},
    "log": {
        "every_n_steps": integer(1),
        "inspect": boolean(),
        "inspect_every_n_steps": integer(1, auto=True),
        "inspect_budget": number(0, 1, positive=True),
        "histograms": boolean(),
        "activations": boolean(),
        "curvature": boolean(),
    },
    "optimize": {"metric": text(), "mode": choice("min", "max")},
    "explain": {"gradcheck": boolean("auto")},
}
EARLY_STOPPING = "lightning.pytorch.callbacks.EarlyStopping"
EARLY_STOPPING_KEYS = {"monitor": text(), "mode": choice("min", "max"), "patience": integer(0), "min_delta": number(0), "verbose": boolean()}
TOP = {"seed": integer(0, 2**32 - 1), "resume": boolean()}
OPTIONAL_TOP = {"overwrite": boolean(), "trust_run_config": boolean()}  # absent from the config.yaml of runs made before it existed
# Sections of the composed config that Hydra or another check owns.
OTHERS = ("model", "loss", "optimizer", "scheduler", "data", "trainer", "callbacks", "hydra", "hparams_search", "experiment")


def check_run_mode(cfg: Mapping[str, Any]) -> None:
    """``resume`` and ``overwrite``, before anything reads the run folder they decide about."""
    for key in ("resume", "overwrite"):
        if not isinstance(cfg[key] if key in cfg else False, bool):  # not .get: a failing ${...} then names no key
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false")
    if cfg["resume"] and cfg.get("overwrite"):
        raise ConfigError("resume=true continues the run in the folder and overwrite=true replaces it: choose one")


def check(cfg: Mapping[str, Any]) -> None:
    """Every key of a training config, in the order a reader meets them in ``conf/train.yaml``: as plain containers (0.3 ms
    against 1.8 ms a job of a sweep), or node by node if a ``???`` or failing interpolation stops the copy (each key's own message)."""
    with suppress(OmegaConfBaseException):
        cfg = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)) if OmegaConf.is_config(cfg) else cfg
    for key in cfg:
        if key not in TOP and key not in OPTIONAL_TOP and key not in SECTIONS and key not in OTHERS:
            raise ConfigError(
                f"{key} is not a microtrain setting; the top-level keys are: {', '.join([*TOP, *OPTIONAL_TOP, *SECTIONS, *OTHERS[:-3]])}"
            )
    for key, rule in [*TOP.items(), *((k, r) for k, r in OPTIONAL_TOP.items() if k in cfg)]:
        _value(cfg, key, rule)
    _section(cfg, "model", MODEL[_name(cfg, "model", MODEL)])
    _section(cfg, "loss", LOSS[_name(cfg, "loss", LOSS)])
    _section(cfg, "data", {**DATA[_name(cfg, "data", DATA)], **SPLITS})
    _section(cfg, "optimizer", OPTIMIZER, open_=True, optional=tuple(k for k in OPTIMIZER if k not in ("_target_", "lr")))
    if "scheduler" in cfg and cfg["scheduler"]:
        rules = SCHEDULER | (PLATEAU if str(cfg["scheduler"].get("_target_")).endswith(".ReduceLROnPlateau") else {})
        _section(cfg, "scheduler", rules, open_=True, optional=tuple(rules))
    _section(cfg, "trainer", TRAINER, open_=True, optional=("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches"))
    for name, rules in SECTIONS.items():
        if name in cfg or name != "explain":
            _section(cfg, name, rules)
    if cfg["log"]["curvature"] and not cfg["log"]["inspect"]:
        raise ConfigError("log.curvature=true is computed at inspections: it needs log.inspect=true (the default)")
    for name, spec in (cfg["callbacks"] or {}).items():
        if not isinstance(spec, Mapping) or "_target_" not in spec:
            raise ConfigError(f"callbacks.{name} needs a _target_ naming a Lightning callback class, like conf/callbacks/early_stopping.yaml")
        if spec["_target_"] == EARLY_STOPPING:  # the group's own member; other callbacks check their arguments
            _section(cfg["callbacks"], name, EARLY_STOPPING_KEYS, open_=True, optional=tuple(EARLY_STOPPING_KEYS), prefix="callbacks.")


def _name(cfg: Mapping[str, Any], section: str, options: Mapping[str, Any]) -> str:
    node = _node(cfg, section)
    if "name" not in node:
        raise ConfigError(f"{section}.name is missing; pick one with {section}={'|'.join(options)}")
    choice(*options)(node["name"], f"{section}.name")
    return node["name"]


def _node(cfg: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    if section not in cfg or not isinstance(cfg[section], Mapping):
        raise ConfigError(f"{section} is missing from the config; select it with {section}=<option>")
    return cfg[section]


def _section(
    cfg: Mapping[str, Any], section: str, rules: Mapping[str, Rule], *, open_: bool = False, optional: tuple[str, ...] = (), prefix: str = ""
) -> None:
    node, name = _node(cfg, section), prefix + section
    for key in node:
        if key not in rules and key != "name" and not open_:
            raise ConfigError(f"{name}.{key} is not a key of {name}; its keys are: {', '.join(rules)}")
    for key, rule in rules.items():
        if key in node:
            rule(node[key], f"{name}.{key}")
        elif key not in optional:
            raise ConfigError(f"{name}.{key} is missing; add it to the {name} config")


def _value(cfg: Mapping[str, Any], key: str, rule: Rule) -> None:
    if key not in cfg:
        raise ConfigError(f"{key} is missing from the config; add it to conf/train.yaml")
    rule(cfg[key], key)
