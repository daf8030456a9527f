"""The HParams tab: each run's hyper-parameters and final metrics, and for a sweep one
experiment that declares every hyper-parameter's domain, swept ones first.

Written with TensorBoard's own hparams API (``tensorboard.plugins.hparams.summary_v2``):

* every run: a session (``hparams_pb``) with its hyper-parameters (only what its model has:
  no ``hidden`` for a linear model), and its final metrics as scalars ``final/<metric>``;
* a single run: an experiment (``hparams_config_pb``) of its own values;
* a sweep: at its end (``sweep_summary``), one experiment for all jobs, written into each job's
  event folder (TensorBoard reads the first it finds, so all must be the same): the parameters
  that differ between jobs first, each with its domain (the values seen, or their interval),
  then the constant ones, then the metrics. Lightning's ``log_hyperparams`` instead writes one
  experiment per run, undeclared, and the first run's decides the table: swept columns came
  unchecked and constant ones checked (measured).
"""

import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence, cast

from omegaconf import DictConfig, OmegaConf

from microtrain.monitor import tags
from microtrain.run.folder import yaml_text

# (column, config key) of what every run shows, when its config has the key
COLUMNS = (
    ("model", "model.name"),
    ("hidden", "model.hidden"),
    ("activation", "model.activation"),
    ("init", "model.init"),
    ("loss", "loss.name"),
    ("optimizer", "optimizer._target_"),
    ("lr", "optimizer.lr"),
    ("momentum", "optimizer.momentum"),
    ("weight_decay", "optimizer.weight_decay"),
    ("batch_size", "data.batch_size"),
    ("data", "data.name"),
    ("seed", "seed"),
)
GROUPS = {"model": "model.name", "loss": "loss.name", "data": "data.name", "optimizer": "optimizer._target_"}
# where a run trains, not what it learns (device.precision is a hyper-parameter: it changes the numbers)
# nor how it is run, logged, checkpointed or ranked (log.curvature, overwrite=true, optimize.metric)
NOT_HPARAMS = (
    "hydra",
    "resume",
    "overwrite",
    "trust_run_config",
    "hparams_search",
    "trainer.enable_progress_bar",
    "device.type",
    "device.threads",
    "device=",
    "log.",
    "checkpoint.",
    "optimize.",
)
METRICS = ("val_loss", "train_loss", "test_loss")


def hparams_of(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The run's hyper-parameters by column name: COLUMNS, then every other key it overrides."""
    params: dict[str, Any] = {}
    for column, key in COLUMNS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None or key == "data.batch_size" and OmegaConf.select(cfg, "data.name") is not None:
            params[column] = _plain(value, key)
    shown = {key for _, key in COLUMNS}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        key = GROUPS.get(key, key)
        if key in shown or f"{key}=".startswith(NOT_HPARAMS) or key.startswith(NOT_HPARAMS) or "=" not in override:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not OmegaConf.is_config(value):
            params[key] = _plain(value, key)
        elif "." not in key:  # a config group's option (callbacks=early_stopping, scheduler=none): by its name
            params[key] = override.split("=", 1)[1]
        else:
            continue
        shown.add(key)
    return params


def _plain(value: Any, key: str) -> Any:
    if key == "optimizer._target_":
        return str(value).rsplit(".", 1)[-1]
    if key == "data.batch_size" and value is None:
        return "all"  # the whole training split in one batch
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The run's final numbers that HParams shows: losses, validation and test metrics, and a linear
    model's optimality gap (its distance to the least-squares optimum)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if (k.split("_")[0] in ("train", "val", "test") or k == "optimality_gap") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def log_hparams(
    logger: Any, cfg: DictConfig, metrics: dict[str, Any], overrides: Optional[Sequence[str]] = None, experiment: Optional[bool] = None
) -> None:
    """The run's session, final metrics and config text; its own experiment unless in a sweep.
    A diverged run's session too (its status a failure, its metrics what stayed finite): the
    learning rate that diverged is a row of the table, not a gap in it."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    if overrides is None or experiment is None:
        in_sweep, overrides = _hydra_job()
        experiment = not in_sweep if experiment is None else experiment
    params = hparams_of(cfg, overrides)
    logger.hparams.update(params)  # tensorboard/hparams.yaml (monitor.logger.RunLogger.save)
    writer = logger.experiment
    step = int(metrics.get("steps", 0))
    final = final_metrics(metrics)
    for name, value in final.items():
        if math.isfinite(value):
            writer.add_scalar(tags.tensorboard_tag(f"final/{name}"), value, step)
    file_writer = writer._get_file_writer()  # what add_scalar itself calls
    if experiment:
        file_writer.add_summary(experiment_pb([params], [final]))
    # trial_id "": each run is a session group of its own, named by its path (TensorBoard's), so
    # runs whose folders share a name (the same job in two sweeps) are not merged and averaged
    file_writer.add_summary(hp.hparams_pb(params, trial_id="", start_time_secs=time.time()))
    file_writer.add_summary(session_end_pb(metrics.get("status", "ok") == "ok"))
    writer.add_text("config", "```yaml\n" + yaml_text(cfg) + "```")
    logger.save()  # the events flushed, and hparams.yaml


def session_end_pb(succeeded: bool) -> Any:
    """The session's end and status (the HParams table's Status column), as TensorBoard's
    ``hparams.summary.session_end_pb`` writes it; that module imports TensorFlow."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    status = api_pb2.STATUS_SUCCESS if succeeded else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(session_end_info=end)
    return Summary(
        value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)]
    )


def experiment_pb(runs: list[dict[str, Any]], finals: list[dict[str, float]]) -> Any:
    """One experiment for these runs: the columns that differ first, each with its domain."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    names = list(dict.fromkeys(name for run in runs for name in run))
    # swept: two or more values among the runs that have it (a linear model's missing hidden is not a sweep)
    differs = [n for n in names if len({repr(run[n]) for run in runs if n in run}) > 1]
    columns = []
    for name in differs + [n for n in names if n not in differs]:
        values = [run[name] for run in runs if name in run]
        columns.append(hp.HParam(name, _domain(values)))
    metric_names = [m for m in METRICS if any(m in f for f in finals)]
    metric_names += sorted({m for f in finals for m in f} - set(metric_names))
    metrics = [hp.Metric(tags.tensorboard_tag(f"final/{m}"), display_name=m) for m in metric_names]
    summary = hp.hparams_config_pb(columns, metrics)
    # TensorBoard orders the columns by `differs` (true first), then by name; summary_v2 has no
    # argument for it, so it is set in the plugin data
    plugin = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in differs
    plugin.content = data.SerializeToString()
    return summary


def _domain(values: list[Any]) -> Any:
    from tensorboard.plugins.hparams import summary_v2 as hp

    distinct = sorted(set(values), key=repr)
    if all(isinstance(v, bool) for v in distinct) or all(isinstance(v, str) for v in distinct):
        return hp.Discrete(distinct)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        numbers = sorted(float(v) for v in distinct)
        return hp.Discrete(numbers) if len(numbers) <= 12 else hp.RealInterval(numbers[0], numbers[-1])
    return None  # mixed types: TensorBoard infers it


def _hydra_job() -> tuple[bool, list[str]]:
    """(whether this job is part of a sweep, its overrides) from Hydra, if it runs under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        config = HydraConfig.get()
        return config.mode == RunMode.MULTIRUN, cast("list[str]", OmegaConf.to_container(config.overrides.task))  # as typed
    except (ImportError, ValueError):
        return False, []


def write_sweep_experiment(jobs: list[Path]) -> None:
    """The sweep's experiment into each finished job's event folder (see the module's note)."""
    import json

    import yaml
    from torch.utils.tensorboard.writer import FileWriter

    runs, finals, folders = [], [], []
    for job in jobs:
        config, metrics = job / "config.yaml", job / "metrics.json"
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not (config.is_file() and metrics.is_file() and tags.events_folder(job).is_dir()):
            continue
        try:
            final = final_metrics(json.loads(metrics.read_text()))
        except (OSError, ValueError):  # a damaged metrics.json: a failed row of the summary, no row of the experiment
            continue
        saved = tags.events_folder(job) / "hparams.yaml"  # what log_hparams gave its session (RunLogger.save)
        if saved.is_file():  # read with yaml's C loader: OmegaConf.load took ~10 ms a job
            runs.append(yaml.load(saved.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {})
        else:
            overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.is_file() else []
            runs.append(hparams_of(cast(DictConfig, OmegaConf.load(config)), overrides))
        finals.append(final)
        folders.append(tags.events_folder(job))
    if not runs:
        return
    summary = experiment_pb(runs, finals)
    for folder in folders:
        earlier = list(folder.glob("events.out.tfevents.*.sweep"))
        if [_experiment_in(path) for path in earlier] == [_experiment_of(summary)]:
            continue  # the same experiment (a sweep refused or skipped this job): its file stays untouched
        for old in earlier:
            old.unlink()  # a resumed sweep's experiment replaces the earlier one
        writer = FileWriter(str(folder), filename_suffix=".sweep")
        writer.add_summary(summary)
        writer.close()


def _experiment_of(summary: Any) -> Any:
    """An experiment summary's content, parsed: equal content serializes to other bytes."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    return plugin_data_pb2.HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content)


def _experiment_in(path: Path) -> Any:
    """The experiment a sweep's ``.sweep`` event file holds (None: unreadable)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        return next((_experiment_of(e.summary) for e in EventFileLoader(str(path)).Load() if e.HasField("summary")), None)
    except Exception:  # noqa: BLE001 -- a damaged file is replaced
        return None
