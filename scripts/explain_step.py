"""Explain one training step: python scripts/explain_step.py +experiment=linear_1x1_sgd"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="explain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from microtrain.cli import explain_command

    explain_command(cfg)


if __name__ == "__main__":
    main()
