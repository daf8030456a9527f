import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Small models run no faster on two threads here, and tests share the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
