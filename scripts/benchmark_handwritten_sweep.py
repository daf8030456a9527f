"""The hand-written side of the stacked-sweep benchmark: what a user who knows torch.func writes
instead of microtrain, in torch alone. 64 copies (16 learning rates x 4 seeds) of the 3->64->1
MLP, stacked with ``torch.func.stack_module_state`` and trained with ``vmap(grad_and_value)`` and
SGD with a learning rate per job, batch 32 (each job its own order), 800 training rows of 3
features as microtrain's default data, the losses read every 50 steps, and each job's final
validation loss printed. No files, no checks, no inspection: the floor microtrain is measured
against (``scripts/benchmark_stacked.py``).

    python scripts/benchmark_handwritten_sweep.py --steps 100
"""

import argparse
import copy
import time

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

STARTED = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=64, help="learning rates x 4 seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as microtrain picks for a tiny model
    rates = torch.logspace(-3, -1, args.jobs // 4).repeat_interleave(4)
    seeds = list(range(4)) * (args.jobs // 4)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=generator)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.1 * torch.randn(1000, 1, generator=generator)
    train_x, train_y, val_x, val_y = x[:800], y[:800], x[800:], y[800:]

    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 1)))
    params, _ = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss_of(p: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(functional_call(base, p, (xb,)), yb)

    step = vmap(grad_and_value(loss_of))
    per_epoch, seen = 800 // 32, []
    for t in range(args.steps):
        if t % per_epoch == 0:
            orders = torch.stack([torch.randperm(800, generator=torch.Generator().manual_seed(s * 1000 + t)) for s in seeds])
        index = orders[:, (t % per_epoch) * 32 : (t % per_epoch + 1) * 32]
        grads, losses = step(params, train_x[index], train_y[index])
        with torch.no_grad():
            for name in params:
                params[name] -= rates.view(-1, *[1] * (params[name].dim() - 1)) * grads[name]
        seen.append(losses)
        if (t + 1) % 50 == 0:
            torch.stack(seen).tolist()  # read the losses, as a loop that logs them does
            seen = []
    with torch.no_grad():
        val = vmap(loss_of, in_dims=(0, None, None))(params, val_x, val_y)
    print(f"{args.jobs} jobs, {args.steps} steps: best val_loss {val.min().item():.4f}, {time.perf_counter() - STARTED:.2f} s in the script")


if __name__ == "__main__":
    main()
