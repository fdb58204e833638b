"""The Lightning Trainer set-up every task shares."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader


@contextlib.contextmanager
def quiet_lightning():
    """Hide Lightning's informational chatter (accelerator lines, tips) and two known-harmless warnings:
    a validation_step with no validation data (asked for), and an upstream pytree deprecation."""
    logger = logging.getLogger("lightning.pytorch")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        logger.setLevel(previous)


def fit_module(module: pl.LightningModule, train: DataLoader, validation: DataLoader | None, epochs: int,
               gradient_clip: float | None = 1.0, patience: int | None = None, progress: bool = True,
               log_dir: str | os.PathLike | None = None, devices: int = 1, strategy: str = "auto") -> pl.Trainer:
    """Train ``module`` on CPU: rich progress bar, optional early stopping on ``val_loss`` after ``patience``
    epochs without improvement, CSV + TensorBoard logs in ``log_dir`` when given. ``devices=2,
    strategy="ddp_spawn"`` (or ``"ddp"`` from a script) trains data-parallel in processes that talk over gloo;
    the trained weights come back to ``module``. Spawned processes receive tensors through files
    (torch's ``file_system`` sharing strategy): the default, file descriptors, fails on some machines
    (this project's sandbox among them) with "unable to resize file"."""
    if "spawn" in str(strategy):
        torch.multiprocessing.set_sharing_strategy("file_system")
    callbacks = [pl.callbacks.RichProgressBar()] if progress else []
    if validation is not None and patience:
        callbacks.append(pl.callbacks.EarlyStopping("val_loss", patience=patience))
    loggers = [pl.loggers.CSVLogger(log_dir), pl.loggers.TensorBoardLogger(log_dir)] if log_dir else False
    with quiet_lightning():
        trainer = pl.Trainer(max_epochs=epochs, gradient_clip_val=gradient_clip, callbacks=callbacks, logger=loggers,
                             enable_progress_bar=progress, enable_checkpointing=False, enable_model_summary=False,
                             log_every_n_steps=1, accelerator="cpu", devices=devices, strategy=strategy)
        trainer.fit(module, train, validation)
    return trainer
