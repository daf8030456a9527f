"""The backward pass written out layer by layer, as notebook 002 derives it by hand: from the
loss's gradient with respect to the prediction back to every weight, each term after the first
computed from the forward values with the chain rule, and the parameter gradients it ends at
checked against autograd's (which differentiates the whole model at once). The first term, the
loss's own derivative, is autograd's of the loss alone.

For ``fc2(act(fc1(x)))`` (the MLP; the linear model is its last layer alone):

* dL/dŷ: the loss's own derivative (``loss = output − 1`` gives 1; MSE gives 2(ŷ − y)/N, N the
  number of elements of ŷ);
* fc2: dL/dW2 = (dL/dŷ)ᵀ·h (an outer product, summed over the batch), dL/db2 = Σ dL/dŷ,
  dL/dh = dL/dŷ·W2;
* the activation: dL/dz = dL/dh ⊙ act′(z) (ReLU: 1 where z > 0; tanh: 1 − h²; sigmoid h(1 − h));
* fc1: dL/dW1 = (dL/dz)ᵀ·x, dL/db1 = Σ dL/dz, and dL/dx = dL/dz·W1.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

DERIVATIVES = {  # act′ from the pre-activation z and the activation h
    nn.ReLU: lambda z, h: (z > 0).to(z.dtype),
    nn.Tanh: lambda z, h: 1 - h * h,
    nn.Sigmoid: lambda z, h: h * (1 - h),
    nn.Identity: lambda z, h: torch.ones_like(z),
}


@dataclass
class Term:
    name: str  # e.g. "dL/d(fc1 output)"
    formula: str  # how it is computed from the forward values
    value: Tensor

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "formula": self.formula, "shape": list(self.value.shape), "value": self.value.tolist()}


def chain(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, params: dict[str, Tensor]) -> list[Term]:
    """The backward pass of ``model`` with the weights ``params`` on (x, y), term by term."""
    with torch.no_grad():
        layers = _layers(model, params)
        inputs, pre, post = [x], [], []
        for weight, bias, activation in layers:  # forward, keeping what backward needs
            z = inputs[-1] @ weight.T + (bias if bias is not None else 0)
            h = activation(z) if activation is not None else z
            pre.append(z)
            post.append(h)
            inputs.append(h)
    prediction = post[-1].detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(prediction, y), prediction)  # the loss's own derivative, its formula's
    terms = [Term("dL/d(output)", "the loss's derivative at the prediction ŷ", grad)]
    names = [name[: -len(".weight")] if name.endswith(".weight") else "" for name in params if name.endswith("weight")]
    for index in reversed(range(len(layers))):
        weight, bias, activation = layers[index]
        layer = names[index] or "linear"
        if activation is not None:  # the MLP's hidden layer h: back through its activation
            derivative = DERIVATIVES[type(activation)](pre[index], post[index])
            terms.append(Term(f"dL/d({layer} activation)", f"dL/d(hidden h) = dL/d({names[index + 1]} input)", grad))
            grad = grad * derivative
            kind = type(activation).__name__
            terms.append(Term(f"dL/d({layer} pre-activation)", f"dL/d({layer} activation) ⊙ {kind}′(pre-activation)", grad))
        else:
            terms.append(Term(f"dL/d({layer} output)", "dL/d(output)", grad))
        prefix = f"{names[index]}." if names[index] else ""
        out = f"{layer} pre-activation" if activation is not None else f"{layer} output"  # what x·Wᵀ + b gave
        terms.append(
            Term(f"dL/d({prefix}weight)", f"(dL/d({out}))ᵀ · (the layer's input): an outer product, summed over rows", grad.T @ inputs[index])
        )
        if bias is not None:
            terms.append(Term(f"dL/d({prefix}bias)", f"dL/d({out}) summed over rows", grad.sum(dim=0)))
        grad = grad @ weight
        terms.append(Term(f"dL/d({layer} input)", f"dL/d({out}) · {prefix}weight", grad))
    return terms


def _layers(model: nn.Module, params: dict[str, Tensor]) -> list[tuple[Tensor, Any, Any]]:
    """(weight, bias, activation after it or None) per linear layer, in forward order."""
    if isinstance(model, nn.Linear):
        return [(params["weight"], params.get("bias"), None)]
    return [(params["fc1.weight"], params.get("fc1.bias"), model.activation), (params["fc2.weight"], params.get("fc2.bias"), None)]


def parameter_gradients(terms: list[Term]) -> dict[str, Tensor]:
    """The parameter gradients the chain ends at, by parameter name."""
    return {t.name[len("dL/d(") : -1]: t.value for t in terms if t.name.endswith(("weight)", "bias)"))}


def against_autograd(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, params: dict[str, Tensor], terms: list[Term]) -> float:
    """The largest |chain − autograd| over every parameter gradient (autograd of the same loss at
    the same weights, unclipped)."""
    names = list(params)

    def loss_at(values: tuple[Tensor, ...]) -> Tensor:
        return loss_fn(torch.func.functional_call(model, dict(zip(names, values)), (x,)), y)

    autograd = dict(zip(names, torch.func.grad(loss_at)(tuple(params[n] for n in names))))
    ours = parameter_gradients(terms)
    return max((ours[n] - autograd[n]).abs().max().item() for n in names)
