from pathlib import Path

import pytest
import torch

from microtrain.losses import LOSSES, build_loss, is_classification

PRED = torch.tensor([[0.5, 1.0], [2.0, -1.0], [0.0, 3.0]])
TARGET = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 1.0]])


def test_closed_forms():
    r = PRED - TARGET
    assert build_loss({"name": "mse"})(PRED, TARGET).item() == pytest.approx((r**2).mean().item())
    assert build_loss({"name": "sse"})(PRED, TARGET).item() == pytest.approx((r**2).sum().item())
    assert build_loss({"name": "l1"})(PRED, TARGET).item() == pytest.approx(r.abs().mean().item())
    huber = torch.where(r.abs() <= 1, 0.5 * r**2, r.abs() - 0.5).mean()
    assert build_loss({"name": "huber", "delta": 1.0})(PRED, TARGET).item() == pytest.approx(huber.item())
    assert build_loss({"name": "residual_sum"})(PRED, TARGET).item() == pytest.approx(r.sum().item())


def test_cross_entropy_on_class_labels():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = -(torch.log_softmax(logits, 1)[[0, 1], labels]).mean()
    assert build_loss({"name": "cross_entropy"})(logits, labels).item() == pytest.approx(expected.item())
    assert is_classification({"name": "cross_entropy"}) and not is_classification({"name": "mse"})


def test_residual_sum_gradient_is_all_ones():
    pred = PRED.clone().requires_grad_()
    build_loss({"name": "residual_sum"})(pred, TARGET).backward()
    assert torch.equal(pred.grad, torch.ones_like(PRED))


def test_every_loss_has_a_config():
    assert sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "loss").glob("*.yaml")) == sorted(LOSSES)
