"""Predict with a finished run: python scripts/predict.py run=<run folder> data.path=new.csv"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from microtrain.cli import predict_command

    predict_command(cfg)


if __name__ == "__main__":
    main()
