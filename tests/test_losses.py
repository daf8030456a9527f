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


@pytest.mark.parametrize("name", LOSSES)
def test_per_job_losses_are_each_jobs_own(name):
    """losses.per_job: K stacked jobs' losses in one call, each the loss of the job's rows alone."""
    from microtrain.losses import per_job

    generator = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 4, generator=generator)
    target = torch.randint(0, 4, (3, 5), generator=generator) if is_classification({"name": name}) else torch.randn(3, 5, 4, generator=generator)
    loss_fn = build_loss({"name": name, "delta": 0.5})
    each = per_job(loss_fn)(out, target)
    assert each.shape == (3,)
    for k in range(3):
        torch.testing.assert_close(each[k], loss_fn(out[k], target[k]), rtol=1e-6, atol=1e-6)
    assert getattr(loss_fn, "reduction", "sum") in ("mean", "sum")  # the run's own loss module is left as it was
