"""Hydra's own LauncherTestSuite, run for hydra/launcher=stacked: any Hydra app's jobs (here Hydra's
test apps, which microtrain cannot stack) go through it as through Hydra's basic launcher."""

import pytest
from hydra.test_utils.launcher_common_tests import LauncherTestSuite

from hydra_plugins.microtrain_stacked import register


@pytest.fixture(autouse=True)
def stacked_launcher_registered() -> None:
    from hydra.version import _UNSPECIFIED_, VersionBase

    register()  # as the command line registers it (Hydra's test runners start from a fresh plugin registry)
    # Hydra's test apps expect no version_base (1.1's defaults); microtrain's commands, run in this
    # process by other tests, set 1.3 for the process
    VersionBase.instance().version_base = _UNSPECIFIED_


@pytest.mark.parametrize("launcher_name, overrides", [("stacked", [])])
class TestStackedLauncher(LauncherTestSuite):
    pass
