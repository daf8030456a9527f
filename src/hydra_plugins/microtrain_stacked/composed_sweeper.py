"""``hydra/sweeper=microtrain``, the default: Hydra's BasicSweeper (the same grid, batches and
``hydra.sweeper.params``), whose check of each batch composes every job once, deriving the
jobs that differ only in values from one composition (``microtrain.config.sweep_jobs``), and
hands those configs to the launcher instead of having it compose them all again."""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from hydra.core.config_loader import ConfigLoader


class ComposedSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict[str, str]] = None) -> None:
        # BasicSweeper.__init__'s own, without its super(BasicSweeper, self): Hydra's plugin scan
        # re-executes its module, and a process that scans twice (Hydra's test runners, a
        # notebook after them) would hold two BasicSweeper classes
        self.overrides: Optional[Sequence[Sequence[Sequence[str]]]] = None
        from hydra_plugins.microtrain_stacked.stacked_launcher import whole_or_null

        max_batch_size = whole_or_null("hydra.sweeper.max_batch_size", max_batch_size, "all jobs in one batch")
        self.batch_index, self.max_batch_size, self.params = 0, max_batch_size, params or {}
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from microtrain.config.sweep_jobs import ComposedOnce

        self.composed_once = ComposedOnce(hydra_context.config_loader)
        super().setup(
            hydra_context=HydraContext(config_loader=cast("ConfigLoader", self.composed_once), callbacks=hydra_context.callbacks),
            task_function=task_function,
            config=config,
        )
        self.hydra_context = hydra_context  # the sweeper itself composes with Hydra's own loader

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job of the batch composed (a bad one fails here, before any job runs), once."""
        from microtrain.config.sweep_jobs import SweepConfigs

        assert self.hydra_context is not None and self.config is not None  # both set by setup, which Hydra calls first
        configs = SweepConfigs(self.hydra_context.config_loader, self.config)
        if self.batch_index == 1 and self.overrides is not None:  # before the first job: every batch's jobs
            _refuse_what_a_solo_run_refuses(self.config, [job for jobs in self.overrides for job in jobs], configs.parse)
        for overrides in batch:
            self.composed_once.held[tuple(overrides)] = configs.load(overrides)

    def sweep(self, arguments: list[str]) -> Any:
        from microtrain.errors import ConfigError

        assert self.config is not None  # set by setup
        record = Path(str(self.config.hydra.sweep.dir)) / "multirun.yaml"
        kept = record.read_bytes() if record.is_file() else None  # Hydra rewrites it before the first batch
        try:
            returns = super().sweep(arguments)
            from microtrain import sweep_summary

            # the summary lists these jobs, not others an earlier sweep left in the same folder
            folder = lambda r: Path(str(r.hydra_cfg.hydra.runtime.output_dir)).resolve()  # noqa: E731
            sweep_summary.launched = {folder(r) for batch in returns for r in batch if r.hydra_cfg}
            # a job refused without touching its folder (an earlier run stays there): its objective is infinity
            sweep_summary.refused = frozenset(folder(r) for batch in returns for r in batch if r.hydra_cfg and math.isinf(r.return_value))
            return returns
        except ConfigError:
            if kept is not None:  # a refused resume leaves the sweep's record as it was
                record.write_bytes(kept)
            raise
        finally:
            self.composed_once.held.clear()


def _refuse_what_a_solo_run_refuses(config: DictConfig, jobs: list[Sequence[str]], parse: Any) -> None:
    """Before any job runs, what a solo run in one of these folders would refuse, for the sweep
    as a whole (one line, nothing written), where the jobs' folders are named by their overrides
    (the default ``hydra.sweep.subdir``; ``${hydra.job.num}`` is known only as the jobs run):

    * without resume=true or overwrite=true, folders that hold runs already: each job would be
      refused alone, and the summary would list the earlier runs as this sweep's;
    * resume=true whose jobs have none of the sweep folder's job folders: a changed setting
      (trainer.max_epochs=50) names other folders, and would start new jobs beside the ones it
      was to finish."""
    from microtrain.config.sweep_jobs import overrides_dirname
    from microtrain.errors import ConfigError
    from microtrain.run import folder as run_folder

    sweep = cast(dict, OmegaConf.to_container(config.hydra.sweep, resolve=False))
    if not jobs or sweep.get("subdir") != "${hydra.job.override_dirname}" or config.get("overwrite") is True:
        return
    sweep_dir, naming = Path(str(config.hydra.sweep.dir)), config.hydra.job.config.override_dirname
    ours = set()
    for overrides in jobs:
        task = [o for o in parse(overrides) if not o.is_hydra_override()]
        ours.add(sweep_dir / overrides_dirname(task, list(naming.exclude_keys), naming.item_sep, naming.kv_sep))
    from microtrain.errors import FolderBusy
    from microtrain.run import lock

    try:  # a sweep (or a job) still going there: said first, not "holds runs" nor "none of these jobs"
        for folder in [sweep_dir, *sorted(f for f in ours if f.is_dir())]:
            lock.check_free(folder)
    except FolderBusy as err:
        raise FolderBusy(str(err).replace("hydra.run.dir", "hydra.sweep.dir")) from None
    if config.get("resume") is not True:
        earlier = sorted((folder, what) for folder in ours if folder.is_dir() and (what := run_folder.earlier_run(folder)))
        if earlier:
            raise ConfigError(
                f"{sweep_dir} holds runs of {len(earlier)} of these {len(ours)} jobs (such as {earlier[0][0].relative_to(sweep_dir)}: {earlier[0][1]}); "
                "resume=true finishes the sweep (its finished jobs stay as they are), overwrite=true replaces them, "
                "or choose another hydra.sweep.dir"
            )
        return
    theirs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()) if sweep_dir.is_dir() else []
    if theirs and not any(folder.is_dir() for folder in ours):
        raise ConfigError(
            f"resume=true: none of these {len(ours)} jobs has a folder in {sweep_dir}, which holds {len(theirs)} other jobs "
            f"(such as {theirs[0].name}); a changed setting names new folders: resume with the sweep's own overrides, "
            "or leave out resume=true to start these jobs"
        )
