"""The step's update rules against torch.optim itself, and the pure step against eager autograd."""

import pytest
import torch
from torch import nn

from microtrain.models import MLP, functional_forward
from microtrain.engine import step as steps

OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.05}),
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (torch.optim.Adam, {"lr": 0.01}),
    (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.01, "betas": (0.8, 0.99)}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.RMSprop, {"lr": 0.01}),
    (torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.01, "momentum": 0.9, "centered": True}),
    (torch.optim.Adagrad, {"lr": 0.05}),
    (torch.optim.Adagrad, {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1}),
]


def _twins(dtype=torch.float32):
    torch.manual_seed(0)
    model = MLP(3, 16, 2).to(dtype)
    twin = MLP(3, 16, 2).to(dtype)
    twin.load_state_dict(model.state_dict())
    return model, twin


def _batches(n=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, generator=g, dtype=dtype), torch.randn(8, 2, generator=g, dtype=dtype)) for _ in range(n)]


@pytest.mark.parametrize("cls, kwargs", OPTIMIZERS)
def test_update_rules_are_bitwise_torch_optim(cls, kwargs):
    model, twin = _twins()
    ours, theirs = cls(model.parameters(), **kwargs), cls(twin.parameters(), **kwargs)
    rule = steps.update_rule(ours)
    assert rule is not None
    params = list(model.parameters())
    for x, y in _batches():
        for m in (model, twin):
            m.zero_grad(set_to_none=True)
            nn.functional.mse_loss(m(x), y).backward()
        rule(params, [p.grad for p in params], [ours.state[p] for p in params], ours.param_groups[0])
        theirs.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    # the state is torch.optim's own, entry for entry (plain SGD leaves an empty dict per parameter)
    held = {k: v for k, v in ours.state_dict()["state"].items() if v}
    assert str(held) == str(theirs.state_dict()["state"])


@pytest.mark.parametrize("cls, kwargs", OPTIMIZERS)
def test_pure_step_matches_eager_autograd(cls, kwargs):
    model, twin = _twins()
    ours, theirs = cls(model.parameters(), **kwargs), cls(twin.parameters(), **kwargs)
    params = [p.detach() for p in model.parameters()]
    forward = functional_forward(model)
    for x, y in _batches():
        steps.train_step(
            params,
            [ours.state[p] for p in model.parameters()],
            (x, y),
            ours.param_groups[0],
            forward=forward,
            loss_fn=nn.functional.mse_loss,
            update=steps.update_rule(ours),
        )
        twin.zero_grad(set_to_none=True)
        nn.functional.mse_loss(twin(x), y).backward()
        theirs.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_unsupported_settings_fall_back_to_torch_optim():
    p = [nn.Parameter(torch.ones(2))]
    assert steps.update_rule(torch.optim.Adamax(p)) is None  # a class with no rule
    assert steps.update_rule(torch.optim.Adam(p, amsgrad=True)) is None
    assert steps.update_rule(torch.optim.Adam(p, decoupled_weight_decay=True)) is None  # AdamW's update, not Adam's
    assert steps.update_rule(torch.optim.AdamW(p)) is not None  # whose groups say decoupled_weight_decay=True
    assert steps.update_rule(torch.optim.RMSprop(p, foreach=True)) is None
    assert steps.update_rule(torch.optim.SGD(p, lr=0.1, maximize=True)) is None


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_stacked_clipping_clips_each_job_by_its_own_norm(algorithm):
    """K jobs' gradients [K, ...] clipped at once are each job's own clip_grad_norm_ (or value):
    the first job's are small (a joint norm would have scaled them too), the last's large."""
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, 2, generator=generator) * torch.tensor([0.01, 1.0, 10.0]).view(3, 1, 1), torch.randn(3, 4, generator=generator)]
    alone = [[g[k].clone() for g in grads] for k in range(3)]
    steps.clip_gradients(grads, 0.5, algorithm, stacked=True)
    for k, own in enumerate(alone):
        clip = torch.nn.utils.clip_grad_norm_ if algorithm == "norm" else torch.nn.utils.clip_grad_value_
        params = [torch.zeros_like(g, requires_grad=True) for g in own]
        for p, g in zip(params, own):
            p.grad = g
        clip(params, 0.5)
        for g, p in zip(grads, params):
            torch.testing.assert_close(g[k], p.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_is_torch_nn_utils_clipping(algorithm):
    model, twin = _twins()
    x, y = _batches(1)[0]
    for m in (model, twin):
        nn.functional.mse_loss(m(x) * 50, y).backward()
    steps.clip_gradients([p.grad for p in model.parameters()], 0.5, algorithm)
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
    else:
        torch.nn.utils.clip_grad_value_(twin.parameters(), 0.5)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)


# Each job's own hyper-parameters (every one a rule lets a job hold), four jobs, as a stack holds them.
STACKED = {
    "SGD momentum": (
        torch.optim.SGD,
        [
            {"lr": lr, "momentum": m, "dampening": d, "weight_decay": w}
            for lr, m, d, w in ((0.05, 0.9, 0.1, 0.01), (0.013, 0.5, 0.0, 0.0), (0.1, 0.0, 0.0, 0.003), (0.031, 0.99, 0.3, 0.1))
        ],
    ),
    "SGD nesterov": (
        torch.optim.SGD,
        [{"lr": 0.05 / (i + 1), "momentum": 0.3 + 0.2 * i, "nesterov": i % 2 == 0, "weight_decay": 0.01 * i} for i in range(4)],
    ),
    "Adam": (
        torch.optim.Adam,
        [
            {"lr": 0.01 * (i + 1) / 3, "betas": (0.8 + 0.05 * i, 0.99 + 0.003 * i), "eps": 10.0 ** -(6 + i), "weight_decay": 0.01 * i}
            for i in range(4)
        ],
    ),
    "AdamW": (torch.optim.AdamW, [{"lr": 0.003 * (i + 1), "betas": (0.9, 0.95 + 0.01 * i), "weight_decay": 0.1 / (i + 1)} for i in range(4)]),
    "RMSprop": (
        torch.optim.RMSprop,
        [{"lr": 0.01 / (i + 1), "alpha": 0.9 + 0.03 * i, "eps": 10.0 ** -(5 + i), "weight_decay": 0.01 * i} for i in range(4)],
    ),
    "RMSprop centered momentum": (
        torch.optim.RMSprop,
        [{"lr": 0.007 * (i + 1), "alpha": 0.99 - 0.03 * i, "momentum": 0.9, "centered": True} for i in range(4)],
    ),
    "Adagrad": (
        torch.optim.Adagrad,
        [
            {"lr": 0.05 * (i + 1), "lr_decay": 0.01 * i, "weight_decay": 0.003 * i, "eps": 10.0 ** -(8 + i), "initial_accumulator_value": 0.1 * i}
            for i in range(4)
        ],
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", STACKED)
def test_stacked_update_is_each_jobs_torch_optim_bitwise(case, dtype):
    """K jobs, each with its own hyper-parameters, updated at once by the stack's rule (tensors of
    K values) give, job by job, torch.optim's own weights and state to the bit: a job of a stack
    steps as its solo run does (the gradients being equal)."""
    from microtrain.stack.step import StackedStep

    cls, settings = STACKED[case]
    torch.manual_seed(0)
    models = [MLP(3, 16, 2).to(dtype) for _ in settings]
    twins = [MLP(3, 16, 2).to(dtype) for _ in settings]
    for model, twin in zip(models, twins):
        twin.load_state_dict(model.state_dict())
    ours = [cls(m.parameters(), **kw) for m, kw in zip(models, settings)]
    theirs = [cls(m.parameters(), **kw) for m, kw in zip(twins, settings)]
    stack = StackedStep(models, ours, nn.MSELoss(), torch.device("cpu"), dtype)
    g = torch.Generator().manual_seed(2)
    for _ in range(25):
        grad = torch.randn(stack.flat_grad.shape, generator=g, dtype=dtype) * 0.1
        stack._update(stack.flat, grad, stack.flat_state, stack.varying)
        for k, (twin, opt) in enumerate(zip(twins, theirs)):
            for p, each in zip(twin.parameters(), stack._split(grad)):
                p.grad = each[k].clone()
            opt.step()
    for k, (twin, opt) in enumerate(zip(twins, theirs)):
        params, state = stack.job_state(k)
        for name, param in twin.named_parameters():
            assert torch.equal(params[name], param.detach()), (k, name, (params[name] - param).abs().max().item())
        for held, (p, want) in zip(state, opt.state.items()):
            for key, value in want.items():
                assert torch.equal(held[key].to(value.dtype), value), (k, key)
