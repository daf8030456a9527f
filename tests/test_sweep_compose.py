"""microtrain's sweeper composes each job once, and derives the jobs that differ only in values
from one composition: checked job by job against Hydra's own composition of mixed sweeps."""

import pytest
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from microtrain.config.sweep_jobs import SweepConfigs
from tests_helpers import CONF

SWEEPS = {
    "groups_and_values": ["model=linear,mlp", "optimizer=sgd,adam", "optimizer.lr=0.01,0.1", "seed=0,1"],
    "add_and_delete": ["+trainer.max_time=00:00:00:05", "~log.curvature", "optimizer.lr=0.01,0.02", "+tag=a,b"],
    "interpolation_values": ["optimizer.momentum=0.5,0.9", "optimizer.lr=0.1,${optimizer.momentum}", "data.batch_size=16,null"],
    "lists_and_ranges": ["optimizer=adam", "optimizer.betas=[0.9,0.99],[0.8,0.9]", "optimizer.lr=range(1,3)"],
    "experiment_recipe": ["+experiment=mlp_3_3_1_by_hand,relu_mlp_3_4_4", "optimizer.lr=0.1,0.2", "trainer.max_epochs=2"],
    "dict_values_and_quotes": ["model=mlp", "model.init_values={fc2.bias:[0.5]},{fc2.bias:[1.5]}", "+note='a b','c=d'"],
    "override_dirname_excluded_keys": ["seed=0,1", "resume=false", "trainer.enable_progress_bar=true,false", "optimizer.lr=0.3"],
}


def _shape(node, path: str = "") -> list:
    """Every node's path, node class, object and reference types and struct/readonly flags."""
    meta = node._metadata
    found = [(path, type(node).__name__, str(meta.object_type), str(meta.ref_type), node._get_node_flag("struct"), node._get_node_flag("readonly"))]
    if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
        for key in node.keys():
            found += _shape(node._get_node(key), f"{path}.{key}")
    elif isinstance(node, ListConfig) and not node._is_none() and not node._is_missing():
        for index in range(len(node)):
            found += _shape(node._get_node(index), f"{path}[{index}]")
    return found


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_every_job_is_the_config_hydra_composes(sweep):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", overrides=["hydra/sweeper=basic", *SWEEPS[sweep]], run_mode=RunMode.MULTIRUN)
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(master.hydra.overrides.task))
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
        assert len(jobs) >= 2
        ours = SweepConfigs(loader, master)
        for overrides in jobs:
            theirs = loader.load_sweep_config(master, list(overrides))
            derived = ours.load(overrides)
            assert OmegaConf.to_container(derived) == OmegaConf.to_container(theirs), overrides
            assert OmegaConf.to_yaml(derived) == OmegaConf.to_yaml(theirs)
            assert derived.hydra.job.override_dirname == theirs.hydra.job.override_dirname
            assert _shape(derived) == _shape(theirs)  # flags and node types too: the copy keeps them
        if sweep in ("groups_and_values", "add_and_delete", "interpolation_values", "override_dirname_excluded_keys"):
            assert ours.composed < len(jobs)  # the value-only jobs were derived
        if sweep == "groups_and_values":
            assert ours.composed == 4  # one per choice of model and optimizer, for 16 jobs


@pytest.mark.parametrize("hydras_own", [False, True])
@pytest.mark.parametrize("sweep", ["groups_and_values", "experiment_recipe", "dict_values_and_quotes"])
def test_a_stacked_jobs_hydra_record_and_task_are_what_hydras_set_config_gives(sweep, hydras_own, tmp_path):
    """The stacked launcher holds each job's own config in HydraConfig instead of Hydra's
    ``set_config`` copy of its ``hydra`` node (unless a user's Hydra callback may read it all:
    ``hydras_own``): ``.hydra/hydra.yaml``, ``HydraConfig.get()`` and the resolved task config are
    still those of Hydra's copy."""
    from hydra.core.hydra_config import HydraConfig

    from hydra_plugins.microtrain_stacked.stacked_launcher import _job_view
    from microtrain.run.folder import write_hydra_record

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "train", overrides=["hydra/launcher=stacked", f"hydra.sweep.dir={tmp_path}", *SWEEPS[sweep]], run_mode=RunMode.MULTIRUN
        )
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(master.hydra.overrides.task))
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
        ours = SweepConfigs(loader, master)
        for number, overrides in enumerate(jobs):
            derived = ours.load(overrides)
            theirs = loader.load_sweep_config(master, list(overrides))
            for config in (derived, theirs):
                with open_dict(config):
                    config.hydra.job.id = config.hydra.job.num = number
            folder, task, hydra_cfg, resolved = _job_view(derived, hydras_own)
            assert HydraConfig.get().job.override_dirname == theirs.hydra.job.override_dirname
            assert resolved and (list(hydra_cfg.keys()) == ["hydra"]) == hydras_own
            write_hydra_record(folder, hydra_cfg, task)
            HydraConfig.instance().set_config(theirs)  # Hydra's own, as run_job sets it
            with read_write(HydraConfig.instance().cfg.hydra.runtime):
                HydraConfig.instance().cfg.hydra.runtime.output_dir = str(folder)
            assert (folder / ".hydra" / "hydra.yaml").read_text() == OmegaConf.to_yaml(HydraConfig.instance().cfg), overrides
            solo_task = OmegaConf.masked_copy(theirs, [k for k in theirs if k != "hydra"])
            OmegaConf.resolve(solo_task)
            assert (folder / ".hydra" / "config.yaml").read_text() == OmegaConf.to_yaml(solo_task), overrides
