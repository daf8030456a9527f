"""Hydra's composition errors as one line with a way out: a typo in a key (``optimizer.lrr=0.1``)
or an option (``model=cnn``), an override Hydra cannot read, a sweep's list given without ``-m``.
Hydra's own messages take 5-10 lines with its search path; these name the closest key or option."""

import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from microtrain.errors import ConfigError

COMPOSITION_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def one_line(err: Exception, keys: Callable[[], list[str]]) -> str:
    """The message for ``err``; ``keys()`` lists the config's dotted keys, for suggestions (it
    composes the config again, so it is only called when a key was mistyped)."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, OverrideParseException):
        quoted = re.fullmatch(r"Error parsing override '(.*)'", first)
        override = quoted.group(1) if quoted else first.split(": ", 1)[-1]
        key, equals, value = override.partition("=")
        if not equals and Path(override).is_dir():  # predict.py <folder>
            return (
                f"{override} is a folder, not a setting (key=value): a run's folder is run={override} for predict.py, "
                f"hydra.run.dir={override} for explain_step.py and for train.py resume=true"
            )
        if key.isascii() and not value.isascii() and not set(value) & set("'\",[]{}()"):  # hydra.run.dir=/tmp/ünï
            return f"an override cannot be read ({first}): Hydra reads only ASCII letters unquoted; quote the value: '{key}=\"{value}\"'"
        return (
            f"an override cannot be read ({first}); close every bracket, and quote a value that holds = or , "
            "(hydra.run.dir='<a sweep job's folder>') or that bash would expand ('data.x=[[1.0],[2.0]]')"
        )
    if found := re.match(r"Could not append to config\. An item is already at '([^']+)'", first):  # +optimizer.lr=0.1
        written = next((a[1:] for a in sys.argv[1:] if a.startswith(f"+{found.group(1)}=")), f"{found.group(1)}=...")
        return f"{found.group(1)} is set already: change it without +, as {written}"
    if found := re.search(r"Could not find '(.+)/([^/']+)'", text):
        group, option = found.groups()
        listed = text.split("Available options in", 1)[1] if "Available options in" in text else ""
        options = re.findall(r"^\t(\S+)\s*$", listed.split("Config search path")[0], flags=re.M)
        hint = did_you_mean(option, options)
        if group == "optimizer":  # a torch.optim class by its name: optimizer=torch takes any
            import torch

            names = [
                n
                for n in dir(torch.optim)
                if n.lower() == option.lower()
                and isinstance(getattr(torch.optim, n), type)
                and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
            ]
            hint = f" (for torch.optim.{names[0]}: optimizer=torch optimizer.name={names[0]})" if names else hint
        return f"{group}={option} is not an option of {group}{hint}; choose one of: {', '.join(options) or '(none)'}"
    if found := re.match(r"Could not override '([^']+)'", first):
        key = found.group(1)
        if "No match in the defaults list" in text:  # a group that does not exist, or one with no default
            from importlib.resources import files

            if files("microtrain.conf").joinpath(key).is_dir():  # experiment=...: a recipe is added, not changed
                given = next((a for a in sys.argv[1:] if a.startswith(f"{key}=")), f"{key}=<option>")
                return f"{key} is a config group with no default choice, so a choice is added: write +{given}"
            groups = sorted({k.split(".")[0] for k in keys()})
            return f"{key} is neither a config group nor a key{did_you_mean(key, groups)}; see --help for the groups and keys"
        append = re.search(r"use (\+\S+)", text)
        typed = next((a for a in sys.argv[1:] if a.startswith(f"{key}=")), None)  # a sweep's values all (Hydra names one job's)
        add = f"; to add a new key write {'+' + typed if typed else append.group(1)}" if append else ""
        if key.startswith(("hydra.launcher.", "hydra.sweeper.")):  # a plugin takes no key it does not name
            add = f"; {key.rsplit('.', 1)[0]} takes: {', '.join(k.rsplit('.', 1)[1] for k in keys() if k.startswith(key.rsplit('.', 1)[0] + '.') and not k.endswith('._target_'))}"
        group, _, rest = key.partition(".")
        owners = _options_with(group, rest) if rest else []
        if owners and any(re.fullmatch(r"\+?resume=[Tt]rue", a) for a in sys.argv[1:]):  # composed on the default option, not the run's
            return (
                f"resume=true keeps the run's {group} settings (its config.yaml): drop {key} to resume, or start a new run in another hydra.run.dir"
            )
        if owners and f"{group}=torch" in sys.argv[1:]:  # optimizer=torch takes its class's arguments with +
            return f"{key} is not a key of {group}=torch, which hands the class what is added with +: write +{typed or key + '=...'}"
        if owners:  # model.activation with model=linear: the key of another option of the group
            return f"{key} is a key of {' and '.join(f'{group}={o}' for o in owners)}, not of this run's {group}: add {group}={owners[0]}"
        known = keys()
        same_group = [k for k in known if k.startswith(f"{group}.")] or known  # a suggestion from the same section first
        # the keys of the group's other options too: model.hiden with model=linear means model.hidden of model=mlp
        others = {f"{group}.{k}": o for o in _options_with(group, "") for k in _option_keys(group, o)}
        close = difflib.get_close_matches(key, list({*same_group, *others}), n=1, cutoff=0.7)
        hint = (
            ""
            if not close
            else f" (did you mean {close[0]}?)"
            if close[0] in same_group
            else f" (did you mean {close[0]}, a key of {group}={others[close[0]]}?)"
        )
        return f"{key} is not a key of the config{hint}{add}"
    if found := re.match(r"Could not delete from config\. '([^']+)' does not exist", first):
        key = found.group(1)
        return f"~{key}: {key} is not a key of the config{did_you_mean(key, keys())}"
    if found := re.match(r"Error merging override (\S+)", first):  # a value of the wrong type for a typed (structured) setting
        cause = str(err.__cause__ or "").strip().splitlines()
        return f"{found.group(1)} is refused: {cause[0] if cause else 'a value of another type is needed'}"
    if found := re.match(r"Ambiguous value for argument '([^']+)'", first):
        return f"{found.group(1)} lists several values: that is a sweep, so add -m (or give one value)"
    if found := re.match(r"Multiple values for (\S+)\. To override a value use 'override \S+ (\S+)'", first):
        group, option = found.groups()
        return f"{group} is a config group: choose its option with {group}={option}, without +"
    return first


def unresolvable(err: Exception) -> ConfigError:
    """A job's config whose interpolation fails (``optimizer.lr=${oc.env:UNSET}``): its key and the
    resolver's own reason, in one line."""
    first = (str(err).strip().splitlines() or ["no message"])[0]
    reason = found.group(1) if (found := re.search(r"raised while resolving interpolation: (.+)", first)) else first
    key = getattr(err, "full_key", None)
    return ConfigError(f"{key or 'a config value'} cannot be resolved: {reason}; set what it refers to, or give the value itself")


def resolve(cfg: DictConfig) -> None:
    """Every ``${...}`` of a job's config replaced by its value, in place, as a stacked job's is:
    ``config.yaml`` then holds the values the run used, which ``resume=true`` and ``predict.py``
    read again (an ``${oc.env:...}`` read again in another shell would change the model unseen).
    Value by value rather than ``OmegaConf.resolve``, which names no key when one fails and turns
    an escaped ``\\${x}`` into ``${x}``, an interpolation again (a file named so could not load).
    ConfigError naming the first key that does not resolve."""
    leaves: list[tuple[str, Any]] = []
    _walk(OmegaConf.to_container(cfg, resolve=False), "", leaves)
    for key, raw in leaves:
        if not isinstance(raw, str) or not INTERPOLATION.search(raw):
            continue
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except InterpolationResolutionError as err:
            raise unresolvable(err) from None
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        elif isinstance(value, str):
            value = value.replace("${", "\\${")  # text that holds ${ (an escaped one's value) stays text
        OmegaConf.update(cfg, key, value, merge=False)


INTERPOLATION = re.compile(r"(?<!\\)\$\{")  # ${ not escaped as \${


def _walk(node: Any, prefix: str, out: list[tuple[str, Any]]) -> None:
    """(dotted key, raw value) of every leaf, a whole-node interpolation (``model: ${...}``) included."""
    if isinstance(node, (dict, list)):
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            _walk(value, f"{prefix}{key}.", out)
    else:
        out.append((prefix[:-1], node))


def outside_a_job(err: Exception, config_name: str) -> tuple[str, int]:
    """(the one line, the exit code) for an error Hydra raised before any job ran: exit 2 for
    Hydra's own (a config it cannot compose), 1 for anything else. A sweep refused before its
    first job leaves no folder (Hydra wrote multirun.yaml into it already)."""
    from hydra.errors import HydraException

    from microtrain import sweep_summary
    from microtrain.run import folder as run_folder

    if isinstance(err, OSError) and err.filename:  # Hydra making the run or sweep folder: read-only, full, not allowed
        return str(run_folder.write_failed(Path(err.filename), err)).split(", then resume")[0] + " (or another hydra.run.dir / hydra.sweep.dir)", 2
    from microtrain.errors import MicrotrainError

    if isinstance(err, MicrotrainError):  # microtrain's own refusal before any job (a sweeper's): its line
        return str(err), 2
    if not isinstance(err, COMPOSITION_ERRORS):
        text = str(err).strip()
        first = text.splitlines()[0] if text else "no message"
        if resolving := re.search(r"raised while resolving interpolation: (.+)", first):  # a resolver's own refusal
            return resolving.group(1), 2
        unknown = re.search(r"target '([\w.]+)'.*unexpected keyword argument '(\w+)'.*full_key: ([\w.]+)", text, flags=re.S)
        if unknown:  # +hydra.launcher.max_job=4: the plugin's class does not take that setting
            import inspect

            from hydra.utils import get_class

            target, key, node = unknown.groups()
            taken = [p for p in inspect.signature(get_class(target)).parameters if p not in ("self", "args", "kwargs")]
            return f"{node}.{key} is not a setting of {target.rsplit('.', 1)[1]}{did_you_mean(key, taken)}; it takes: {', '.join(taken)}", 2
        return f"{type(err).__name__}: {first} (HYDRA_FULL_ERROR=1 shows the traceback)", 2 if isinstance(err, HydraException) else 1
    folder = sweep_summary.started
    if folder is not None and folder.is_dir() and {p.name for p in folder.iterdir()} <= {"multirun.yaml"}:
        run_folder.remove_unused(folder, ("multirun.yaml",))
    line = one_line(err, lambda: config_keys(config_name))
    return line if config_name == "train" else line.replace("so add -m (or give one value)", "which only train.py runs: give one value"), 2


def config_keys(config_name: str) -> list[str]:
    """The dotted keys of the command's default config, for "did you mean" (composed again: only on a typo)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    # the Hydra plugins the command chose (hydra/launcher=stacked), so their settings are keys too
    chosen = [a for a in sys.argv[1:] if re.fullmatch(r"hydra/\w+=[\w.-]+", a)]
    GlobalHydra.instance().clear()
    with initialize_config_module("microtrain.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name, overrides=chosen, return_hydra_config=True), resolve=False)
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            keys.append(prefix + str(key))
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(cfg, "")
    return keys


def _options_with(group: str, key: str) -> list[str]:
    """The options of a config group (conf/<group>/*.yaml) that have ``key``."""
    from importlib.resources import files

    folder = files("microtrain.conf") / group
    if not folder.is_dir():
        return []
    found = []
    for option in sorted(folder.iterdir(), key=lambda f: f.name):
        if option.name.endswith(".yaml"):
            values = OmegaConf.create(option.read_text())
            if not key or OmegaConf.select(values, key, default=None, throw_on_missing=False) is not None or key in values:
                found.append(option.name.removesuffix(".yaml"))
    return found


def _option_keys(group: str, option: str) -> list[str]:
    from importlib.resources import files

    return [str(k) for k in OmegaConf.create((files("microtrain.conf") / group / f"{option}.yaml").read_text()).keys()]
