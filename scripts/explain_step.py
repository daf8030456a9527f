"""Explain one training step: python scripts/explain_step.py +experiment=linear_1x1_sgd (the same as microtrain-explain)."""

from microtrain.cli import explain_main

if __name__ == "__main__":
    explain_main()
