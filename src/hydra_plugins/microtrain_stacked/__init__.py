"""microtrain's Hydra launcher: ``hydra/launcher=stacked`` (see ``stacked_launcher``)."""


def register() -> None:
    """``hydra/launcher=stacked`` (and ``stacked_submitit_local``, ``stacked_slurm`` with the cluster
    extra), ``hydra/sweeper=microtrain``: Hydra's scan of ``hydra_plugins`` misses an editable
    install (``pip install -e``); registered by hand, they are always found."""
    import contextlib

    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # first: its scan re-executes Hydra's plugin modules, BasicSweeper's among them
    from hydra_plugins.microtrain_stacked import composed_sweeper, stacked_launcher

    classes: list[type] = [stacked_launcher.StackedLauncher, composed_sweeper.ComposedSweeper]
    with contextlib.suppress(ImportError):  # Hydra's submitit plugin: the cluster extra
        from hydra_plugins.microtrain_stacked import stacked_submitit

        classes += [stacked_submitit.StackedLocalLauncher, stacked_submitit.StackedSlurmLauncher]
    for found in classes:
        plugins.register(found)
