"""What a hidden layer does on the inspected batch: its pre-activations and activations, read
by forward hooks that exist only for that one extra forward pass (a hook left on the model
would cost every step ~5 us a module)."""

import torch
from torch import Tensor, nn

ACTIVATION_MODULES = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def hidden_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(layer name, activation module) of each hidden layer: the activation module and the name of
    the linear layer that feeds it (``fc1`` for the MLP). A linear model has none."""
    layers: list[tuple[str, nn.Module]] = []
    feeding = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            feeding = name
        elif isinstance(module, ACTIVATION_MODULES) and feeding is not None and name:
            layers.append((feeding, module))
    return layers


@torch.no_grad()
def capture(model: nn.Module, layers: list[tuple[str, nn.Module]], x: Tensor) -> dict[str, tuple[str, Tensor, Tensor]]:
    """{layer: (activation kind, pre-activations, activations)} of ``model(x)``."""
    seen: dict[str, tuple[str, Tensor, Tensor]] = {}

    def hook(name: str):
        return lambda module, inputs, output: seen.__setitem__(name, (type(module).__name__, inputs[0], output))

    handles = [module.register_forward_hook(hook(name)) for name, module in layers]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen
