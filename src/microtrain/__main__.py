"""``python -m microtrain [overrides]`` trains, as ``microtrain-train`` does."""

from microtrain.cli import train_main

train_main()
