"""microtrain: train a linear model or a small MLP and see what its weights and gradients do."""

__version__ = "0.1.0"
