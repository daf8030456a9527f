import pytest
import torch
from torch import nn

from microtrain.errors import ConfigError
from microtrain.models import INIT_SCHEMES, MLP, build_model, stacked_forward


def cfg(**kw):
    base = {
        "name": "linear",
        "in_features": None,
        "out_features": None,
        "bias": True,
        "init": "default",
        "init_gain": 1.0,
        "init_std": 0.01,
        "init_values": None,
    }
    if kw.get("name") == "mlp":
        base["activation"] = "relu"
    base.update(kw)
    return base


def test_linear_is_nn_linear_with_notebook_names():
    model = build_model(cfg(), 3, 2)
    assert isinstance(model, nn.Linear)
    assert [n for n, _ in model.named_parameters()] == ["weight", "bias"]
    assert model.weight.shape == (2, 3)


def test_mlp_names_shapes_and_no_bias():
    model = build_model(cfg(name="mlp", hidden=5, activation="tanh"), 3, 2)
    assert isinstance(model, MLP)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {
        "fc1.weight": (5, 3),
        "fc1.bias": (5,),
        "fc2.weight": (2, 5),
        "fc2.bias": (2,),
    }
    no_bias = build_model(cfg(name="mlp", hidden=5, bias=False), 3, 2)
    assert [n for n, _ in no_bias.named_parameters()] == ["fc1.weight", "fc2.weight"]


def test_identity_mlp_is_two_stacked_linear_maps():
    model = build_model(cfg(name="mlp", hidden=4, activation="identity"), 3, 1)
    x = torch.randn(7, 3)
    expected = (x @ model.fc1.weight.T + model.fc1.bias) @ model.fc2.weight.T + model.fc2.bias
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"bias": False},
        *({"name": "mlp", "hidden": 6, "activation": a} for a in ("relu", "tanh", "sigmoid", "identity")),
        {"name": "mlp", "hidden": 6, "bias": False},
    ],
)
def test_stacked_forward_is_each_models_own(settings):
    """models.stacked_forward: K models' stacked weights (nn.Linear's layout, a leading job
    dimension) and each job's own rows give what each model gives on its rows."""
    torch.manual_seed(0)
    models = [build_model(cfg(**settings), 3, 2) for _ in range(4)]
    weights = [torch.stack(list(p)) for p in zip(*(m.parameters() for m in models))]
    x = torch.randn(4, 5, 3)
    out = stacked_forward(models[0])(weights, x)
    assert out.shape == (4, 5, 2)
    for k, model in enumerate(models):
        torch.testing.assert_close(out[k], model(x[k]), rtol=1e-6, atol=1e-6)
    assert torch.equal(stacked_forward(models[0])(list(models[0].parameters()), x[0]), models[0](x[0]))  # one model: its own kernels
    with pytest.raises(TypeError, match="linear layers and elementwise activations"):
        stacked_forward(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))


@pytest.mark.parametrize("settings", [{}, {"name": "mlp", "hidden": 64}, {"name": "mlp", "hidden": 10, "activation": "tanh", "bias": False}])
def test_a_stacked_one_output_layer_gives_each_models_outputs_and_gradients(settings):
    """One output (models.OneOutput, its backward written by hand): each job's outputs and the
    gradients of its weights and rows are its own model's, and gradcheck agrees in float64."""
    from microtrain.models import OneOutput

    torch.manual_seed(0)
    models = [build_model(cfg(**settings), 3, 1) for _ in range(4)]
    weights = [torch.stack([p.detach() for p in each]).requires_grad_() for each in zip(*(m.parameters() for m in models))]
    x = torch.randn(4, 32, 3)
    target = torch.randn(4, 32, 1)
    out = stacked_forward(models[0])(weights, x)
    ((out - target) ** 2).mean(dim=(1, 2)).sum().backward()
    for k, model in enumerate(models):
        mine = model(x[k])
        torch.testing.assert_close(out[k].detach(), mine.detach(), rtol=1e-6, atol=1e-6)
        nn.functional.mse_loss(mine, target[k]).backward()
        for stacked, (name, param) in zip(weights, model.named_parameters()):
            torch.testing.assert_close(stacked.grad[k], param.grad, rtol=1e-6, atol=1e-7, msg=name)
    inputs = (torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True), torch.randn(3, 1, 4, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(OneOutput.apply, (*inputs, torch.randn(3, 1, dtype=torch.float64, requires_grad=True)))
    assert torch.autograd.gradcheck(OneOutput.apply, (*inputs, None))


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_each_init_scheme(scheme):
    torch.manual_seed(0)
    model = build_model(cfg(name="mlp", hidden=256, init=scheme, init_gain=2.0, init_std=0.05), 128, 64)
    w = model.fc1.weight.detach()
    if scheme == "zeros":
        assert not w.any()
    elif scheme == "normal":
        assert abs(w.std().item() - 0.05) < 0.005
    elif scheme == "xavier_normal":  # std = gain * sqrt(2 / (fan_in + fan_out))
        assert abs(w.std().item() - 2.0 * (2 / (128 + 256)) ** 0.5) < 0.01
    elif scheme == "xavier_uniform":
        bound = 2.0 * (6 / (128 + 256)) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    elif scheme == "kaiming_normal":  # std = sqrt(2 / fan_in)
        assert abs(w.std().item() - (2 / 128) ** 0.5) < 0.01
    elif scheme == "orthogonal":  # rows or columns orthonormal, times the gain
        torch.testing.assert_close(w.T @ w, 4.0 * torch.eye(128), atol=1e-4, rtol=0)
    else:  # PyTorch's own: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert w.abs().max() <= 128**-0.5
    if scheme != "default":
        assert not model.fc1.bias.any()


def test_init_values_applied_after_the_scheme():
    model = build_model(cfg(init="zeros", init_values={"weight": [[0.8693]], "bias": [-0.2126]}), 1, 1)
    assert model.weight.item() == pytest.approx(0.8693)
    assert model.bias.item() == pytest.approx(-0.2126)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"fc3.weight": [[1.0]]}, "does not have"),
        ({"weight": [[1.0, 2.0]]}, "shape [1, 2]"),
        ({"weight": [["a"]]}, "not a (nested) list of numbers"),
    ],
)
def test_init_values_checked(values, message):
    with pytest.raises(ConfigError, match=None) as err:
        build_model(cfg(init_values=values), 1, 1)
    assert message in str(err.value)
