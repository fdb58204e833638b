"""LightningModules that train rnnkit networks, so progress bars, early stopping, checkpoints, logging,
gradient clipping and multi-process training come from Lightning."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


class _NetworkModule(pl.LightningModule):
    """A network trained with AdamW (decoupled weight decay); subclasses define the loss of a batch."""

    def __init__(self, network: nn.Module, learning_rate: float, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.network = network
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def loss(self, batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.loss(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.loss(batch, "val")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)


class RegressionModule(_NetworkModule):
    """Mean-squared-error regression of ``network(x)`` onto ``y``; logs ``train_loss`` / ``val_loss``."""

    def loss(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.network(x), y)
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss


IGNORE = -100  # target of padded steps: no loss, no accuracy


class ClassificationModule(_NetworkModule):
    """Cross-entropy classification of ``network(x, lengths)``: logits ``[B, C]`` for targets ``[B]``, or
    per-step logits ``[B, T, C]`` for targets ``[B, T]`` whose padded steps hold :data:`IGNORE`.
    Logs loss and accuracy per stage."""

    def loss(self, batch, stage: str) -> torch.Tensor:
        x, lengths, y = batch
        logits = self.network(x, lengths)
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        loss = nn.functional.cross_entropy(logits, y, ignore_index=IGNORE)
        counted = y != IGNORE
        accuracy = (logits.argmax(1)[counted] == y[counted]).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log(f"{stage}_accuracy", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss
