"""What a run leaves in its folder, written so an interrupted write never corrupts an older file."""

import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
CONFIG = "config.yaml"
DATA_TRUTH = "data_truth.json"
DATA_INFO = "data_info.json"


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` the file as ``<name>.partial``, then rename it over ``path``: a rename is atomic
    on POSIX, so a crash or kill mid-write leaves the old file whole. No fsync: it cost ~1 ms a
    write, and a tiny model checkpoints every epoch of a few ms. Every file of a run goes here."""
    write_all_atomic([(path, write)])


DISK_ERRORS = (28, 30, 13, 122)  # ENOSPC, EROFS, EACCES, EDQUOT


def write_failed(path: Path, err: BaseException) -> Exception:
    """One line naming the file and why: the OS's reason, or a full disk behind torch.save's."""
    import errno

    from microtrain.errors import WriteFailed

    if isinstance(err, OSError) and err.errno is not None:
        reason = os.strerror(err.errno)
        hint = {
            errno.ENOSPC: "free some space",
            errno.EDQUOT: "free some space",
            errno.EROFS: "choose a writable folder",
            errno.EACCES: "choose a folder you may write to",
            errno.EEXIST: "it is a file, not a folder: choose a folder",
            errno.ENOTDIR: "a file stands where a folder is needed: choose a folder",
        }.get(err.errno, "check the folder")
    elif isinstance(err, RuntimeError) and any(words in str(err) for words in ("unexpected pos", "iostream error")):  # torch.save's two
        reason, hint = "the disk filled up while it was written (torch.save stopped short)", "free some space"
    else:
        return err if isinstance(err, Exception) else RuntimeError(str(err))
    return WriteFailed(f"cannot write {path}: {reason}; {hint}, then resume=true goes on from the last checkpoint written")


def write_all_atomic(files: list[tuple[Path, Callable[[Path], object]]]) -> None:
    """Several files that belong together (the checkpoints of a stacked group's jobs): every
    ``.partial`` first, then the renames, so a kill leaves them all of one moment but for the
    microseconds of the renames."""
    partials = [(path, path.with_name(path.name + ".partial")) for path, _ in files]
    try:
        for (path, partial), (_, write) in zip(partials, files):
            try:
                partial.unlink(missing_ok=True)  # a stale one, or a planted link: never written through
                write(partial)
            except (OSError, RuntimeError) as err:  # torch.save on a full disk: "unexpected pos" or "basic_ios::clear: iostream error"
                raise write_failed(path, err) from None
        for path, partial in partials:
            try:
                os.replace(partial, path)
            except OSError as err:
                raise write_failed(path, err) from None
    finally:
        for _, partial in partials:
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda partial: partial.write_text(text))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: Path, hint: str) -> Any:
    """A run's JSON file (metrics.json, data_info.json), or one line naming it when it cannot be
    read (cut short by a full disk, edited by hand) and what to do (``hint``)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        from microtrain.errors import ConfigError

        reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else f"not JSON: {err}"
        raise ConfigError(f"{path} cannot be read ({reason}); {hint}") from None


def hydra_value(value: Any) -> str:
    """``value`` as Hydra's override grammar reads it back: as it is where the grammar reads it
    plain (ASCII letters only: it refuses ``ü`` unquoted), else in double quotes, with the
    backslashes before a quote and at the end doubled (Hydra's escapes) and its quotes escaped."""
    text = str(value)
    if re.fullmatch(r"[\w/.+:@%-]+", text, flags=re.ASCII):  # nothing Hydra or bash would read otherwise
        return text
    text = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', text)
    return '"' + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + '"'


def hydra_override(key: str, value: Any) -> str:
    """``key=value`` as bash and then Hydra read it: a sweep job's folder name holds ``=`` and ``,``
    (``optimizer.lr=0.01,trainer.max_epochs=3``), which Hydra's grammar reads as a sweep unless the
    value is quoted, and bash strips one level of quotes first."""
    quoted = hydra_value(value)
    return f"{key}={quoted}" if quoted == str(value) else shlex.quote(f"{key}={quoted}")


def tensorboard_command(logdir: Path) -> str:
    return f"tensorboard --logdir {shlex.quote(str(logdir))}"


# the spellings YAML 1.1 reads as booleans, which OmegaConf's dumper quotes (it is case-sensitive: yEs stays plain)
_YAML_BOOLS = {f(word) for word in ("y", "yes", "n", "no", "true", "false", "on", "off") for f in (str.lower, str.capitalize, str.upper)}


class _YamlDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml's C emitter where PyYAML has it
    pass


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    """Quoted when it would read back as a bool or a number ('1e5', 'yes'), as OmegaConf's dumper does."""
    typed = text in _YAML_BOOLS
    try:
        float(text)
        typed = True
    except ValueError:
        pass
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="'" if typed else None)


_YamlDumper.add_representer(str, _string)


def yaml_text(cfg: Any, key: Optional[str] = None) -> str:
    """``OmegaConf.to_yaml(cfg)``'s text (with ``key``: of ``{key: cfg[key]}`` alone), emitted by
    libyaml: 7.3 ms against 1.1 ms for a sweep job's ``.hydra/hydra.yaml``, ~13 ms of each job's
    ~100 ms start-up in a stacked sweep (measured here). ``tests/test_run_folder_integrity.py`` checks that both write the same text. OmegaConf
    writes it where libyaml would not: a value libyaml cannot represent (a Path in a structured
    config), and text outside Unicode's first plane, which libyaml escapes (an emoji)."""
    from omegaconf import OmegaConf

    if key is not None:
        container: Any = {key: OmegaConf.to_container(cfg[key], enum_to_str=True)}
    else:
        container = OmegaConf.to_container(cfg, enum_to_str=True) if OmegaConf.is_config(cfg) else cfg
    text: Optional[str]
    try:
        text = yaml.dump(container, Dumper=_YamlDumper, default_flow_style=False, allow_unicode=True, sort_keys=False)
    except yaml.representer.RepresenterError:
        text = None
    if text is None or "\\U" in text:  # libyaml's escape of a character beyond U+FFFF (or the text \U itself)
        if key is not None:
            return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, key))
        return OmegaConf.to_yaml(cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg))
    return text


def write_hydra_record(run_dir: Path, hydra_cfg: Any, task_cfg: Any) -> None:
    """``.hydra/``: Hydra's record of the job (its overrides, Hydra's config, the job's config),
    written by microtrain once the run is valid (``hydra.output_subdir: null`` stops Hydra from
    writing it at the job's start, before any check: a rejected re-run would rewrite it).
    ``hydra_cfg``: ``HydraConfig.instance().cfg``, Hydra's own ``{hydra: ...}`` copy (or a stacked
    job's whole config, ``hydra_plugins.microtrain_stacked``): its ``hydra`` node is written as it is."""
    record = Path(run_dir) / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record / "overrides.yaml", yaml_text(hydra_cfg.hydra.overrides.task))  # as typed, as Hydra writes them
    write_text_atomic(record / "hydra.yaml", yaml_text(hydra_cfg, key="hydra"))
    if task_cfg is not None:
        write_text_atomic(record / "config.yaml", yaml_text(task_cfg))


# What a run writes into its folder: overwrite=true removes these and nothing else of the folder.
RUN_FILES = (CONFIG, METRICS, DATA_INFO, DATA_TRUTH, "history.jsonl", "trajectory.pt", "report.png", "train.log", "predictions.csv", "step.json")
RUN_FOLDERS = (CHECKPOINTS, "tensorboard", ".hydra")


def earlier_run(run_dir: Path) -> Optional[str]:
    """What the folder holds of a run that trained ("a run with status ok, 500 steps"), or None.
    A run refused before it trained left at most .hydra/ and a failed metrics.json: not a run."""
    trained = (run_dir / CONFIG).is_file() or any((run_dir / CHECKPOINTS).glob("*.ckpt")) or (run_dir / "tensorboard").is_dir()
    if not trained:
        return None
    try:
        metrics = json.loads((run_dir / METRICS).read_text())
    except (OSError, ValueError):
        return "a run that never finished"
    steps = f", {metrics['steps']} steps" if "steps" in metrics else ""
    return f"a run with status {metrics.get('status', 'unknown')}{steps}"


def clear_run(run_dir: Path) -> None:
    """overwrite=true: the earlier run's files go, so no stale checkpoint or event file is mixed in."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


_MADE_BY_HYDRA = re.compile(r"(\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{2}|outputs|multirun)")


def remove_unused(folder: Path, ours: tuple[str, ...]) -> None:
    """Remove what a run or sweep refused before it started wrote (``ours``: its ``.lock``,
    ``.hydra/``, ``train.log``; a sweep's ``multirun.yaml``), then the folder if nothing else is
    in it, and the dated folders above it that Hydra made for it (``outputs/<date>``) once they
    are empty. Nothing else is deleted: not another run's file, not the working directory."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return
    folder = folder.resolve()
    if folder == cwd or folder in cwd.parents:
        return
    for name in ours:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    parent = folder
    while parent == folder or (_MADE_BY_HYDRA.fullmatch(parent.name) and parent != cwd and parent not in cwd.parents):
        try:
            parent.rmdir()  # only when empty: anything left is someone else's
        except OSError:
            return
        parent = parent.parent


def refuse_links(run_dir: Path) -> None:
    """A run folder is written without following a link: one that holds a symbolic link (its
    ``.lock``, ``train.log``, a ``.partial`` file, ...) would have microtrain write wherever the
    link points, so it is refused before anything is written."""
    from microtrain.errors import ConfigError

    if not run_dir.is_dir():
        return
    for path in [run_dir, *run_dir.rglob("*")]:
        if path != run_dir and path.is_symlink():
            raise ConfigError(
                f"{path} is a symbolic link; microtrain writes a run folder only without links: "
                "remove it, or copy the run into a folder of plain files"
            )
