"""The two models microtrain trains, their initialisation schemes and explicit initial values.

Parameter names follow the notebooks: the linear model *is* an ``nn.Linear`` (``weight``,
``bias``); the MLP is ``fc1`` -> activation -> ``fc2`` (``fc1.weight`` ... ``fc2.bias``).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, cast

import torch
from torch import nn

from microtrain.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}
INIT_SCHEMES = ("default", "xavier_normal", "xavier_uniform", "kaiming_normal", "orthogonal", "normal", "zeros")


class MLP(nn.Module):
    """Two linear maps with an activation between them; identity gives two stacked linear maps."""

    def __init__(self, in_features: int, hidden: int, out_features: int, activation: str = "relu", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden, bias=bias)
        self.activation = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


def functional_forward(model: nn.Module) -> Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``model`` as a function of its parameters, for ``engine.step.train_step`` (one model: explain, compile)."""
    names = [name for name, _ in model.named_parameters()]

    def forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, params)), (x,))

    return forward


def stacked_forward(model: nn.Module) -> Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]:
    """K models shaped as ``model``, as one function of their stacked parameters (``named_parameters``
    order, each ``[K, ...]`` in ``nn.Linear``'s layout): x ``[K, B, in]`` -> ``[K, B, out]``, each
    linear map one batched product (``baddbmm``) for all K; or one model's: x ``[B, in]`` and its
    own parameters, by ``nn.Linear``'s kernels. Why not ``torch.func.vmap``: measured
    here on the 3->64->1 MLP (batch 32, SGD with momentum, one thread), a step of vmap's
    ``grad_and_value`` took 1,054 us at K = 1 and 1,754 at K = 64; these products with autograd
    and the update once on all weights (``stack.step``), 280 and 701."""
    layers: list[nn.Module] = [model] if isinstance(model, nn.Linear) else list(model.children())  # MLP: fc1, activation, fc2
    if not all(isinstance(layer, (nn.Linear, *ACTIVATIONS.values())) for layer in layers):
        raise TypeError(f"a stack holds linear layers and elementwise activations in order, not {type(model).__name__}")

    def forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        remaining = iter(params)
        for layer in layers:
            if isinstance(layer, nn.Linear):
                weight, bias = next(remaining), next(remaining) if layer.bias is not None else None
                if x.dim() == 2:  # one model's rows and weights (no job dimension): nn.Linear's own kernel
                    x = nn.functional.linear(x, weight, bias)
                elif weight.shape[1] == 1 and _eager(x):
                    x = cast(torch.Tensor, OneOutput.apply(x, weight, bias))
                else:
                    x = torch.baddbmm(bias.unsqueeze(1), x, weight.mT) if bias is not None else torch.bmm(x, weight.mT)
            else:
                x = layer(x)
        return x

    return forward


def _eager(x: torch.Tensor) -> bool:
    """An eager step outside autocast (``OneOutput``'s backward takes its inputs' dtypes; a compiled
    step need not be bitwise eager: it takes ``baddbmm`` as it is)."""
    return not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type)


class OneOutput(torch.autograd.Function):
    """K stacked layers of one output: x ``[K, B, in]`` -> ``[K, B, 1]``, each job's outputs and
    gradients ``nn.Linear``'s to the bit where the CPU's BLAS sums alike. Measured here (torch 2.13,
    K = 4, 60 shapes of inputs 1-256 by batch 1-1,000):

    * the forward as (w·xᵀ)ᵀ, the sums of ``nn.Linear``'s matrix-vector product for one output:
      38 shapes of 60 bitwise; ``baddbmm(b, x, wᵀ)``: 20, and not the 3->64->1 MLP's (4e-6 apart);
    * the backward by hand: autograd's of (w·xᵀ)ᵀ hands ReLU's backward a transposed gradient
      (527 us where a contiguous one takes 15, at K = 64, batch 32, 64 units); the weight's
      gradient as gᵀ·x (9.6 us where ``baddbmm``'s xᵀ·g takes 68; bitwise in 28 of 30 shapes,
      not at 10 inputs by 150 or 1,000 rows), the input's as g·w (one product an entry, as
      ``bmm``'s, 6.7 us against 22).

    Without a bias it is ``bmm(w, xᵀ)ᵀ``: ``bmm(x, wᵀ)`` summed otherwise for one job (K = 1) than
    for several, so a job resumed without its group drifted from it. The 64-job step of the
    3->64->1 MLP takes as long as with ``baddbmm`` (377 against 380 us, medians of 12
    alternations); a linear model's forward and backward (no rows' gradient) 45 us against 31 at
    64 x 32 rows x 3 inputs, 99 against 333 at 64 x 256 x 20, 1.5 ms against 5.9 at 64 x 1,000 x 100."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return (torch.bmm(weight, x.mT) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, x.mT)).mT

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        wanted = ctx.needs_input_grad  # the rows' gradient only below a first layer (data needs none)
        return (
            grad * weight if wanted[0] else None,  # an outer product: each entry one product, as bmm's
            torch.bmm(grad.mT, x) if wanted[1] else None,
            grad.sum(1) if wanted[2] else None,
        )


def parameter_count(cfg: Mapping[str, Any], in_features: int, out_features: int) -> int:
    """The model's parameters, counted from its config before anything is built."""
    bias = 1 if cfg["bias"] else 0
    if cfg["name"] == "linear":
        return (in_features + bias) * out_features
    return (in_features + bias) * cfg["hidden"] + (cfg["hidden"] + bias) * out_features


def training_bytes(cfg: Mapping[str, Any], in_features: int, out_features: int, rows: int, width: int = 4) -> int:
    """About what training the model takes: weights, gradients, two optimizer-state tensors
    (Adam's) and inspection's copy of the weights, plus a batch's activations kept for backward."""
    hidden = cfg["hidden"] if cfg["name"] == "mlp" else 0
    return width * (5 * parameter_count(cfg, in_features, out_features) + 3 * rows * (in_features + hidden + out_features))


def build_model(cfg: Mapping[str, Any], in_features: int, out_features: int) -> nn.Module:
    """Build ``model.name`` (linear | mlp) for data with the given sizes, then initialise it."""
    in_features = _size(cfg, "in_features", in_features, "features")
    out_features = _size(cfg, "out_features", out_features, "outputs")
    if cfg["name"] == "linear":
        model: nn.Module = nn.Linear(in_features, out_features, bias=cfg["bias"])
    else:
        model = MLP(in_features, cfg["hidden"], out_features, cfg["activation"], cfg["bias"])
    initialise(model, cfg)
    return model


def _size(cfg: Mapping[str, Any], key: str, inferred: int, what: str) -> int:
    wanted = cfg[key]
    if wanted is None:
        return inferred
    if wanted != inferred:
        raise ConfigError(f"model.{key}={wanted} but the data has {inferred} {what}; drop model.{key} to infer it")
    return wanted


def initialise(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """Apply ``model.init`` to every weight (biases of non-default schemes start at zero), then ``model.init_values``."""
    scheme, gain, std = cfg["init"], cfg["init_gain"], cfg["init_std"]
    if scheme != "default":
        for module in model.modules():
            if isinstance(module, nn.Linear):
                _init_weight(module.weight, scheme, gain, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    set_values(model, cfg["init_values"] or {})


def _init_weight(weight: torch.Tensor, scheme: str, gain: float, std: float) -> None:
    if scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain=gain)
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain=gain)
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif scheme == "orthogonal":
        nn.init.orthogonal_(weight, gain=gain)
    elif scheme == "normal":
        nn.init.normal_(weight, std=std)
    else:
        nn.init.zeros_(weight)


def set_values(model: nn.Module, values: Mapping[str, Any]) -> None:
    """Overwrite named parameters with explicit values, as the notebooks print them."""
    params = dict(model.named_parameters())
    if not isinstance(values, Mapping):  # [[1.0]]: values without the parameter's name (a DictConfig is a Mapping)
        example = next(iter(params))
        raise ConfigError(
            f"model.init_values maps parameter names to values, like {{{example}: [...]}}; this model's parameters are: " + ", ".join(params)
        )
    for name, value in values.items():
        if name not in params:
            raise ConfigError(f"model.init_values names {name!r}, which this model does not have; its parameters are: " + ", ".join(params))
        try:
            tensor = torch.as_tensor(_plain(value), dtype=params[name].dtype)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.init_values.{name} is not a (nested) list of numbers: {err}") from None
        if not torch.isfinite(tensor).all():
            where = [int(i) for i in (~torch.isfinite(tensor)).nonzero()[0]]
            raise ConfigError(
                f"model.init_values.{name} at index {where} (counting from 0) is {tensor[tuple(where)].item()}: "
                "initial weights must be finite numbers"
            )
        if tensor.shape != params[name].shape:
            raise ConfigError(f"model.init_values.{name} has shape {list(tensor.shape)} but the parameter has shape {list(params[name].shape)}")
        with torch.no_grad():
            params[name].copy_(tensor)


def _plain(value: Any) -> Any:
    """OmegaConf lists to plain lists, so torch can read them."""
    if hasattr(value, "items"):
        raise TypeError("expected a list, got a mapping")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
