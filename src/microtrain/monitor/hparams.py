"""The run's HParams entry and config text in TensorBoard, so sweep runs line up side by side."""

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf


def log_hparams(logger: TensorBoardLogger, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """One HParams entry per run with its real final metrics, so sweep runs line up in TensorBoard."""
    params = {
        "model": cfg.model.name,
        **{key: cfg.model[key] for key in ("hidden", "activation") if key in cfg.model},  # only what the model has
        "init": cfg.model.init,
        "loss": cfg.loss.name,
        "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1],
        **{key: cfg.optimizer[key] for key in ("lr", "momentum", "weight_decay") if key in cfg.optimizer},
        "batch_size": cfg.data.batch_size or 0,  # 0 = the whole training split (HParams needs one type)
        "data": cfg.data.name,
        "seed": cfg.seed,
    }
    final = {f"hparams/{k}": v for k, v in metrics.items() if k.split("_")[0] in ("train", "val", "test") and isinstance(v, float)}
    logger.log_hyperparams(params, final)
    logger.experiment.add_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg) + "```")
    logger.experiment.flush()
