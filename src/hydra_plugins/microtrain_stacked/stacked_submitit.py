"""``hydra/launcher=stacked_submitit_local`` and ``hydra/launcher=stacked_slurm``: a stacked
sweep whose groups each run as one submitit job (one SLURM job a group: one GPU trains all its
jobs), through Hydra's submitit plugin and its settings (``hydra.launcher.timeout_min``,
``gpus_per_node``, ``partition``, ...). The sweep process composes, checks and groups the jobs
as ``hydra/launcher=stacked`` does, waits for the groups, and records each job; the jobs that do
not stack run as the plugin runs any job, one submitit job each. Each job's folder, summary row
and objective are those of the stacked launcher."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.microtrain_stacked.stacked_launcher import StackedLauncher, checked_max_jobs


def train_chunk(cfgs: list[DictConfig], folders: list[Path], resume: list[bool], overrides: list[list[str]]) -> tuple[list, float]:
    """In the submitit job: one chunk of a group trained stacked; (each job's metrics, seconds)."""
    import time

    from microtrain.console import quiet_libraries
    from microtrain.stack.plan import _trained_here

    quiet_libraries()
    started = time.perf_counter()
    return _trained_here(cfgs, folders, resume, overrides), time.perf_counter() - started


class _StackedSubmitit(StackedLauncher, BaseSubmititLauncher):
    def __init__(self, max_jobs: Optional[int] = None, **params: Any) -> None:
        BaseSubmititLauncher.__init__(self, **params)
        self.max_jobs = checked_max_jobs(max_jobs)

    def _executor(self) -> Any:
        """A submitit executor with the plugin's settings (``hydra.launcher.*``), as its own launcher makes one."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k not in init_keys})
        return executor

    def train_chunks(self) -> Any:
        def send(work: list[tuple]) -> list[Any]:
            jobs = self._executor().map_array(train_chunk, *zip(*work))
            outcomes = []
            for job, (_, folders, _, _) in zip(jobs, work):
                try:
                    outcomes.append(job.result())
                except Exception as err:  # noqa: BLE001 -- a group the cluster lost: its jobs fail, the others stand
                    from microtrain.stack.plan import failed

                    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                    outcomes.append(([failed(f, f"the submitit job {job.job_id} failed: {reason}") for f in folders], 0.0))
            return outcomes

        return send

    def run_alone(self, configs: list[DictConfig], numbers: list[int]) -> list[JobReturn]:
        """As the plugin runs any job: one submitit job each, Hydra's run_job inside."""
        if not configs:
            return []
        params = [
            (OmegaConf.to_container(c.hydra.overrides.task), "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state())
            for c, n in zip(configs, numbers)
        ]
        return [job.results()[0] for job in self._executor().map_array(self, *zip(*params))]


class StackedLocalLauncher(_StackedSubmitit):
    NAME = "stacked_submitit_local"
    _EXECUTOR = "local"


class StackedSlurmLauncher(_StackedSubmitit):
    NAME = "stacked_slurm"
    _EXECUTOR = "slurm"


# The plugin's own settings, and max_jobs as hydra/launcher=stacked has it. Stored from code, as
# the plugin stores submitit_local and submitit_slurm: its settings are typed dataclasses.
@dataclass
class StackedLocalConf(LocalQueueConf):
    """python scripts/train.py -m hydra/launcher=stacked_submitit_local optimizer=sgd,adam optimizer.lr=0.01,0.1"""

    _target_: str = "hydra_plugins.microtrain_stacked.stacked_submitit.StackedLocalLauncher"
    max_jobs: Optional[int] = None  # most jobs in one stacked model; null = as many as fit in a quarter of the free memory


@dataclass
class StackedSlurmConf(SlurmQueueConf):
    """python scripts/train.py -m hydra/launcher=stacked_slurm device=cuda hydra.launcher.gpus_per_node=1 ..."""

    _target_: str = "hydra_plugins.microtrain_stacked.stacked_submitit.StackedSlurmLauncher"
    max_jobs: Optional[int] = None  # most jobs in one stacked model, one SLURM job


ConfigStore.instance().store(group="hydra/launcher", name="stacked_submitit_local", node=StackedLocalConf, provider="microtrain")
ConfigStore.instance().store(group="hydra/launcher", name="stacked_slurm", node=StackedSlurmConf, provider="microtrain")
