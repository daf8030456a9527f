"""Train a model: python scripts/train.py model=mlp optimizer.lr=0.1 (the same as microtrain-train)."""

from microtrain.cli import train_main

if __name__ == "__main__":
    train_main()
