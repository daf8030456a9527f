"""Train a model from the Hydra configs in conf/: python scripts/train.py model=mlp optimizer.lr=0.1"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from microtrain.cli import train_command

    return train_command(cfg)


if __name__ == "__main__":
    main()
