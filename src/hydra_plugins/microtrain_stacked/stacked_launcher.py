"""``hydra/launcher=stacked``: the jobs of a sweep that differ only in hyper-parameters train as
one stacked model in this process (``microtrain.stack``); the others run one after another as
Hydra's basic launcher runs them. Every job still goes through Hydra's ``run_job``, so each has
its folder, ``.hydra/`` files and log, its Hydra callbacks, and its objective for the sweeper
(Optuna included: each batch of ``hydra.sweeper.n_jobs`` trials trains stacked)."""

import copy
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


# Its config is conf/hydra/launcher/stacked.yaml, shipped in microtrain's own config package, not
# a ConfigStore entry, and microtrain.cli registers the class: Hydra finds plugins by scanning
# the hydra_plugins namespace, which misses packages installed in editable mode (pip install -e).


class StackedLauncher(Launcher):
    def __init__(self, max_jobs: Optional[int] = None) -> None:
        if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
            from microtrain.console import error_console

            # checked when Hydra builds the launcher, before any folder or file is written
            error_console.print(f"error: hydra.launcher.max_jobs={max_jobs!r} must be a whole number of at least 1, or null "
                                "(as many jobs as fit in memory)", markup=False)
            sys.exit(2)
        self.max_jobs = max_jobs
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

    def _launch(self, sweep_dir: Path, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, plan: Any,
                console: Any) -> Sequence[JobReturn]:
        console.print(f"hydra/launcher=stacked: {len(job_overrides)} jobs")
        configs = []
        for offset, overrides in enumerate(job_overrides):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = initial_job_idx + offset
            configs.append(config)
        folders = [self._output_dir(config) for config in configs]
        tasks = [_task_config(config) for config in configs]
        overrides = [list(config.hydra.overrides.task) for config in configs]
        results, fresh = plan.run_stacked(tasks, folders, self.max_jobs, console, overrides)
        runs = []
        for index, (config, result) in enumerate(zip(configs, results)):
            if index in fresh:  # resume=true for a job that never wrote a checkpoint: it starts
                with open_dict(config):
                    config.resume = False
            task = self.task_function if result is None else _reported(result)
            runs.append(run_job(hydra_context=self.hydra_context, task_function=task, config=config,
                                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

    @staticmethod
    def _output_dir(config: DictConfig) -> Path:
        """Where ``run_job`` will put the job: the sweep folder and the job's subfolder."""
        HydraConfig.instance().set_config(config)
        subdir = str(OmegaConf.select(config, "hydra.sweep.subdir"))
        return Path(os.path.abspath(os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")), subdir)))


def _task_config(config: DictConfig) -> DictConfig:
    """The job's config as its task function would see it: without ``hydra``, resolved."""
    HydraConfig.instance().set_config(config)
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    OmegaConf.resolve(task)
    return task


def _reported(result: dict[str, Any]) -> TaskFunction:
    """The task function ``run_job`` calls for a job that already trained stacked: it hands the
    job's objective to Hydra (infinity for a diverged or failed job, as a solo job in a sweep)."""

    def task(cfg: DictConfig) -> float:
        from microtrain.run import folder as run_folder

        run_folder.write_hydra_record(Path(HydraConfig.get().runtime.output_dir), HydraConfig.get(), cfg)  # hydra.output_subdir: null
        logging.getLogger("microtrain").info("trained stacked: %s", result["status"])  # train.log, as a solo job's
        return result["objective"] if result["status"] == "ok" else math.inf

    return task
