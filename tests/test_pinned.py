"""Pinned runs: the default linear and MLP runs' first 20 losses and final weights, recorded
before the core was reorganised (torchtune pins its recipes' loss curves the same way).

A refactor that changes a rounding anywhere in the step fails here: the curve at rtol 1e-6 and
the weights bitwise (as exact float hex strings).
"""

import json
from pathlib import Path

import pytest
import torch

from microtrain.train.fit import train
from tests_helpers import make_cfg, read_events

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_runs.json").read_text())


def _hex(model: torch.nn.Module) -> dict[str, list[str]]:
    return {k: [float(x).hex() for x in v.reshape(-1).tolist()] for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_loss_curve_of_the_first_20_steps_is_pinned(tmp_path, model):
    # one step a call and a point every step, so the curve holds each step's own loss
    train(make_cfg(f"model={model}", "trainer.max_steps=20", "loop.steps_per_call=1", "log.every_n_steps=1"), tmp_path)
    curve = [s.value for s in read_events(tmp_path).Scalars("train_loss_step")]
    assert curve == pytest.approx(PINNED[model]["curve"], rel=1e-6)


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_weights_after_20_default_steps_are_bitwise_pinned(tmp_path, model):
    """Bitwise per CPU kernel family: AVX512 kernels round the same step differently from the
    machine the first pins were recorded on (CI's of 2 December, whose capability went
    unrecorded), so "weights_by_cpu" holds pins recorded with the code of before the change
    under test, by torch.backends.cpu.get_cpu_capability()."""
    result = train(make_cfg(f"model={model}", "trainer.max_steps=20"), tmp_path)
    pins = PINNED[model].get("weights_by_cpu", {}).get(torch.backends.cpu.get_cpu_capability(), PINNED[model]["weights"])
    assert _hex(result.module.model) == pins
