import pytest
import torch

from microtrain import device
from microtrain.config import schema
from microtrain.errors import ConfigError, DeviceError
from tests_helpers import make_cfg


def fake_gpu(monkeypatch, available=True, bf16=True, free_bytes=8 * 2**30):
    class Props:
        name = "Fake GPU"
        total_memory = 16 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (free_bytes, 16 * 2**30))


def test_auto_without_gpu_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = device.resolve({"type": "auto", "precision": "32", "threads": "auto"})
    assert plan.accelerator == "cpu" and plan.description.startswith("cpu")


def test_auto_with_gpu_is_cuda_and_names_it(monkeypatch):
    fake_gpu(monkeypatch)
    plan = device.resolve({"type": "auto", "precision": "bf16-mixed", "threads": "auto"})
    assert plan.accelerator == "cuda" and plan.precision == "bf16-mixed"
    assert plan.description == "cuda:0 (Fake GPU, 16.0 GiB)"


def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU is visible; use device=cpu"):
        device.resolve({"type": "cuda", "precision": "32", "threads": "auto"})


def test_precision_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="16-mixed needs a CUDA GPU"):
        device.resolve({"type": "cpu", "precision": "16-mixed", "threads": "auto"})
    with pytest.raises(ConfigError, match="is not one of"):  # the schema's check, before resolve
        schema.check(make_cfg("device.precision=8"))
    assert device.resolve({"type": "cpu", "precision": "bf16-mixed", "threads": "auto"}).precision == "bf16-mixed"
    fake_gpu(monkeypatch, bf16=False)
    with pytest.raises(DeviceError, match="no bfloat16 support"):
        device.resolve({"type": "cuda", "precision": "bf16-mixed", "threads": "auto"})
    assert device.resolve({"type": "cuda", "precision": "16-mixed", "threads": "auto"}).accelerator == "cuda"


def test_data_placement(monkeypatch):
    assert device.data_placement(10**12, torch.device("cpu")) == "device"
    fake_gpu(monkeypatch, free_bytes=4 * 2**30)
    assert device.data_placement(2**30, torch.device("cuda", 0)) == "device"
    assert device.data_placement(2 * 2**30, torch.device("cuda", 0)) == "pinned"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check runs for real")
def test_the_gpu_check_on_a_cpu_machine_says_so_in_one_line_and_runs_nothing(tmp_path):
    import subprocess

    from tests_helpers import ROOT

    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "gpu_check: no CUDA GPU is visible; nothing run" and not done.stderr
    assert not (tmp_path / "out").exists()


def test_several_processes_start_without_rerunning_the_command_where_none_can_be(monkeypatch):
    """Where Lightning would re-run the command for each rank (ddp, or auto with several devices or
    nodes): ddp_spawn; in an interactive session (a notebook: sys.ps1) ddp_notebook, the one
    Lightning takes there and refuses ddp_spawn for. cli.py applies it in sweeps and from Python."""
    import sys

    from microtrain.device import spawned

    monkeypatch.delattr(sys, "ps1", raising=False)
    assert spawned({"devices": 2, "strategy": "auto"}) == spawned({"devices": 1, "strategy": "ddp"}) == "ddp_spawn"
    assert spawned({"devices": 1, "num_nodes": 2, "strategy": "auto"}) == spawned({"devices": -1, "strategy": "auto"}) == "ddp_spawn"
    assert spawned({"devices": 1, "strategy": "auto"}) is None and spawned({"devices": [0], "strategy": "auto"}) is None
    assert spawned({"devices": "auto", "strategy": "auto"}) is None and spawned({"devices": 2, "strategy": "ddp_spawn"}) is None
    monkeypatch.setattr(sys, "ps1", "In : ", raising=False)
    assert spawned({"devices": 2, "strategy": "auto"}) == spawned({"devices": 2, "strategy": "ddp"}) == "ddp_notebook"
