"""The start-up reference for scripts/benchmark.py: a bare Hydra app that builds a Lightning Trainer
and runs one training step, printing the wall-clock time of that step. Nothing of microtrain."""

import time

import hydra
from omegaconf import DictConfig


@hydra.main(config_path=None, version_base="1.3")
def main(cfg: DictConfig) -> None:
    import lightning as L
    import torch

    class OneStep(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                print(f"first step at {time.time():.6f}", flush=True)
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(OneStep(), torch.utils.data.DataLoader(data, batch_size=32))


if __name__ == "__main__":
    main()
