"""``hydra/launcher=stacked``: the jobs of a sweep that differ only in hyper-parameters train as
one stacked model in this process (``microtrain.stack``); the others run one after another as
Hydra's basic launcher runs them. Every job still goes through Hydra's ``run_job``, so each has
its folder, ``.hydra/`` files and log, its Hydra callbacks, and its objective for the sweeper
(Optuna included: each batch of ``hydra.sweeper.n_jobs`` trials trains stacked)."""

import logging
import math
from dataclasses import dataclass
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, cast

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)


@dataclass
class StackedConf:
    """python scripts/train.py -m hydra/launcher=stacked optimizer.lr=0.001,0.01,0.1 seed=0,1

    Jobs that differ only in hyper-parameters train as one stacked model in this process; the
    others run one after another. Stored from code, as Hydra's own launchers are, so that any
    Hydra app that imports this module (Hydra's LauncherTestSuite among them) finds it."""

    _target_: str = "hydra_plugins.microtrain_stacked.stacked_launcher.StackedLauncher"
    max_jobs: Optional[int] = None  # most jobs in one stacked model; null = as many as fit in a quarter of the free memory


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedConf, provider="microtrain")


def whole_or_null(key: str, value: Any, null: str) -> Optional[int]:
    """A count setting of a launcher or sweeper (``hydra.launcher.max_jobs``), checked when Hydra
    builds it, before any folder or file is written: one line and exit 2 if it is not one."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        from microtrain.console import error_console

        written = str(value).lower() if isinstance(value, bool) else value  # as it was typed
        error_console.print(f"error: {key}={written} must be a whole number of at least 1, or null ({null})", markup=False)
        sys.exit(2)
    return value


def checked_max_jobs(max_jobs: Any) -> Optional[int]:
    return whole_or_null("hydra.launcher.max_jobs", max_jobs, "as many jobs as fit in memory")


class StackedLauncher(Launcher):
    NAME = "stacked"

    def __init__(self, max_jobs: Optional[int] = None) -> None:
        self.max_jobs = checked_max_jobs(max_jobs)
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from microtrain.console import console, start_up_collection_paused

        with start_up_collection_paused():
            from microtrain.stack import plan

        setup_globals()
        assert self.config is not None  # Hydra calls setup before launch
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        from microtrain.console import error_console
        from microtrain.errors import FolderBusy
        from microtrain.run import lock

        try:  # one stacked sweep at a time in a sweep folder: a second would train every job again beside it
            lock.acquire(sweep_dir)
        except FolderBusy as err:
            error_console.print(f"error: {str(err).replace('hydra.run.dir', 'hydra.sweep.dir')}", markup=False, soft_wrap=True)
            sys.exit(2)
        try:
            return self._launch(sweep_dir, job_overrides, initial_job_idx, plan, console)
        finally:
            lock.release(sweep_dir)

    def _launch(self, sweep_dir: Path, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, plan: Any, console: Any) -> Sequence[JobReturn]:
        console.print(f"hydra/launcher={self.NAME}: {len(job_overrides)} jobs")
        assert self.hydra_context is not None and self.config is not None  # set by setup
        configs = []
        for offset, overrides in enumerate(job_overrides):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = initial_job_idx + offset
            configs.append(config)
        # Hydra's own {hydra: ...} view only where a user's Hydra callback may read all of it
        hydras_own = any(type(c).__module__.split(".")[0] != "microtrain" for c in self.hydra_context.callbacks.callbacks)
        views = [_job_view(config, hydras_own) for config in configs]
        folders, tasks = [v.folder for v in views], [v.task for v in views]
        task_overrides = [cast("list[str]", OmegaConf.to_container(config.hydra.overrides.task)) for config in configs]  # as typed
        unresolved = frozenset(i for i, view in enumerate(views) if not view.resolved)
        results, fresh = plan.run_stacked(tasks, folders, self.max_jobs, console, task_overrides, self.train_chunks(), unresolved)
        alone = [i for i, result in enumerate(results) if result is None]
        for index in fresh:  # resume=true for a job that never wrote a checkpoint: it starts
            with open_dict(configs[index]):
                configs[index].resume = False
        ran = dict(zip(alone, self.run_alone([configs[i] for i in alone], [initial_job_idx + i for i in alone])))
        returns = [ran[i] if result is None else self._trained(config, views[i], result) for i, (config, result) in enumerate(zip(configs, results))]
        # Hydra's logging back once, not after each job as run_job's callers do (1 ms a job here):
        # nothing logs between two jobs' records
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def train_chunks(self) -> Optional[Any]:
        """How the groups train: here, one after another (``stack.plan``); a cluster launcher sends them away."""
        return None

    def run_alone(self, configs: list[DictConfig], numbers: list[int]) -> list[JobReturn]:
        """The jobs that do not stack, through Hydra's own ``run_job``, one after another."""
        assert self.hydra_context is not None and self.task_function is not None and self.config is not None  # set by setup
        runs = []
        for config in configs:
            runs.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

    def _trained(self, config: DictConfig, view: "JobView", result: dict[str, Any]) -> JobReturn:
        """What Hydra's ``run_job`` does for a job, for one that already trained stacked: its
        ``.hydra/`` record, its log (``train.log``), the Hydra callbacks, and its objective for
        the sweeper (infinity for a diverged or failed job, as a solo job in a sweep). Without
        run_job's two more copies of the config and two more ``set_config``: ~20 ms a job here,
        a second of a 64-job sweep."""
        from microtrain.run import folder as run_folder

        assert self.hydra_context is not None and self.task_function is not None and self.config is not None  # set by setup
        folder, task, hydra_cfg = view.folder, view.task, view.hydra_cfg
        HydraConfig.instance().cfg = hydra_cfg  # type: ignore[assignment]  # the job's own, as run_job sets it; Hydra declares HydraConf
        ret = JobReturn(
            overrides=cast("list[str]", OmegaConf.to_container(config.hydra.overrides.task)),
            cfg=task,
            hydra_cfg=hydra_cfg,
            working_dir=str(folder) if hydra_cfg.hydra.job.chdir else os.getcwd(),
        )
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        with env_override(hydra_cfg.hydra.job.env_set):
            self.hydra_context.callbacks.on_job_start(config=config, task_function=self.task_function)
            # nothing recorded for a job refused before its folder was touched (an earlier run there
            # stays whole, as a solo job's) or one that finished before this resume
            if not (result.get("kept") or result.get("skipped")):
                run_folder.write_hydra_record(folder, hydra_cfg, task)  # hydra.output_subdir: null
                logging.getLogger("microtrain").info("trained stacked: %s", result["status"])  # train.log, as a solo job's
            ret.return_value = result["objective"] if result["status"] == "ok" else -math.inf if task.optimize.mode == "max" else math.inf
            ret.status = JobStatus.COMPLETED
        ret.task_name = JobRuntime.instance().get("name")
        self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        return ret


class JobView(NamedTuple):
    folder: Path  # where run_job would put the job
    task: DictConfig  # its config as its task function sees it: without hydra, resolved
    hydra_cfg: DictConfig  # the config whose hydra node is its Hydra config
    resolved: bool  # False: an interpolation of its config fails (left unresolved; the job runs alone)


def _job_view(config: DictConfig, hydras_own: bool = False) -> JobView:
    """A job as ``run_job`` would see it. Hydra's ``set_config`` copies the job's ``hydra`` node
    (3 ms a job here, 0.2 s of a 64-job sweep) into a
    ``{hydra: ...}`` of its own; the job's config is already its own copy (``config.sweep_jobs``),
    so ``HydraConfig`` holds it as it is, its node read-only as ``set_config`` leaves it: every
    reader of microtrain's (the ``hydra:`` resolver, ``HydraConfig.get()``, the sweep summary)
    reads the ``hydra`` node, and ``.hydra/hydra.yaml`` is written from that node alone.
    ``hydras_own``: Hydra's own ``{hydra: ...}`` view, for Hydra callbacks of the user's, which
    may read the whole of ``job_return.hydra_cfg``."""
    if hydras_own:
        HydraConfig.instance().set_config(config)
    else:
        OmegaConf.set_readonly(config.hydra, True)
        HydraConfig.instance().cfg = config  # type: ignore[assignment]  # Hydra declares HydraConf; set_config stores a DictConfig too
    hydra_cfg = cast(DictConfig, HydraConfig.instance().cfg)
    subdir = str(OmegaConf.select(config, "hydra.sweep.subdir"))  # after HydraConfig: it may read ${hydra:job.num}
    folder = Path(os.path.abspath(os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")), subdir)))
    for node in [config] if hydra_cfg is config else [config, hydra_cfg]:
        with read_write(node.hydra.runtime), open_dict(node.hydra.runtime):
            node.hydra.runtime.output_dir = str(folder)
    task = OmegaConf.masked_copy(config, cast("list[str]", [key for key in config if key != "hydra"]))  # a copy of the task's keys only
    from microtrain.config.overrides import resolve  # as a solo run's (an escaped \${x} stays text)
    from microtrain.errors import ConfigError

    try:
        with read_write(task), open_dict(task):
            resolve(task)
    except (ConfigError, OmegaConfBaseException):  # ${oc.env:UNSET}: left unresolved, the job runs alone and fails there (stack.plan)
        return JobView(folder, task, hydra_cfg, False)
    OmegaConf.set_struct(task, True)  # as run_job's copy of the config is
    return JobView(folder, task, hydra_cfg, True)
