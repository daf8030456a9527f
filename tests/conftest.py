import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Small models run no faster on two threads here, and tests share the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run on a real GPU only; without one they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible (scripts/gpu_check.sh runs these where one is)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
