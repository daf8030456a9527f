"""``python -m microtrain [overrides]`` trains, as ``microtrain-train`` does."""

from microtrain.cli import train_main

if __name__ == "__main__":  # importing this module (a _target_ naming it, say) must not start a run
    train_main()
