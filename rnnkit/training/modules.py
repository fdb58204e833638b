"""LightningModules that train rnnkit networks, so progress bars, early stopping, checkpoints, logging,
gradient clipping and multi-process training come from Lightning."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


class RegressionModule(pl.LightningModule):
    """Mean-squared-error regression of ``network(x)`` onto ``y``, with AdamW (decoupled weight decay)."""

    def __init__(self, network: nn.Module, learning_rate: float = 1e-2, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.network = network
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.network(x), y)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
