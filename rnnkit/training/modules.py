"""LightningModules that train rnnkit networks, so progress bars, early stopping, checkpoints, logging,
gradient clipping and multi-process training come from Lightning."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from rnnkit.training.schedules import Schedule, scheduler_config

ReduceLROnPlateau = torch.optim.lr_scheduler.ReduceLROnPlateau
#: the frequency handed to Lightning for a scheduler rnnkit steps itself (see EpochMeans.with_schedule)
_STEPPED_HERE = 1 << 62


def adam(parameters, learning_rate: float, weight_decay: float | None = None) -> torch.optim.Optimizer:
    """Adam, or AdamW (decoupled weight decay) when ``weight_decay`` is given, in torch's fused implementation
    (one kernel for all the parameters; on the CPU since torch 2.4) where torch has it for the parameters'
    device, else its default one. Same update to rounding; on CPU 3-9x faster a step than the default
    (a loop of ops per parameter): 0.17 ms against 0.52 at 4k parameters, 0.99 against 9.2 at 2.2M."""
    parameters = list(parameters)
    make = torch.optim.Adam if weight_decay is None else functools.partial(torch.optim.AdamW, weight_decay=weight_decay)
    try:
        return make(parameters, lr=learning_rate, fused=True)
    except RuntimeError:  # no fused kernel for this device or dtype (or an older torch)
        return make(parameters, lr=learning_rate)


class EpochMeans(pl.LightningModule):
    """A LightningModule that logs per-batch values as their epoch means, weighted by batch size: what
    ``self.log(name, value, on_step=False, on_epoch=True)`` in every step logs, with one ``self.log`` a value and
    epoch instead of one a batch. Lightning's costs ~0.4 ms a call (it moves the metric's whole state to the
    value's device each time), 8-12% of a small classifier's training with two values logged a step.

    It also carries the fit's learning-rate schedule (:mod:`rnnkit.training.schedules`): subclasses return
    ``self.with_schedule(optimizer)`` from ``configure_optimizers``, and under manual optimisation call
    ``self.step_schedules("step")`` after each batch's updates (the epoch's are stepped here)."""

    #: set by :func:`rnnkit.tasks.trainer.fit_module` from ``fit(lr_schedule=...)``
    lr_schedule: Schedule = "constant"
    #: the logged mean a plateau schedule watches: ``"val_loss"`` with validation data, else ``"train_loss"``
    lr_monitor: str = "train_loss"

    def __init__(self) -> None:
        super().__init__()
        self._epoch_sums: dict[str, list] = {}  # name -> [sum of value x batch size, sum of batch sizes]
        self._validation_means: dict[str, Tensor] = {}  # the last validation's, for step_schedules

    def log_epoch_mean(self, name: str, value: Tensor, batch_size: int) -> None:
        """Add this batch's ``value`` (``"train_..."`` or ``"val_..."``) to its epoch's mean."""
        weighted = value.detach() * batch_size
        if name in self._epoch_sums:
            self._epoch_sums[name][0] += weighted
            self._epoch_sums[name][1] += batch_size
        else:
            self._epoch_sums[name] = [weighted, batch_size]

    def _log_means(self, stage: str) -> dict[str, Tensor]:
        means = {}
        for name in [n for n in self._epoch_sums if n.startswith(f"{stage}_")]:
            total, count = self._epoch_sums.pop(name)
            means[name] = total / count
            self.log(name, means[name], prog_bar=True, on_step=False, on_epoch=True)
        return means

    def on_train_epoch_end(self) -> None:
        means = self._log_means("train")
        self.step_schedules("epoch", {**self._validation_means, **means})
        self._validation_means = {}  # (used once: a plateau schedule never reads an earlier epoch's val_loss)

    def on_validation_epoch_end(self) -> None:
        self._validation_means = self._log_means("val")  # before EarlyStopping reads val_loss (end of validation)

    def with_schedule(self, optimizer: torch.optim.Optimizer):
        """What ``configure_optimizers`` returns: ``optimizer``, with the scheduler of :attr:`lr_schedule` over
        the fit's optimizer steps (Lightning's estimate: epochs x batches an epoch, across processes)."""
        config = scheduler_config(optimizer, self.lr_schedule, self.trainer.estimated_stepping_batches,
                                  self.lr_monitor)
        if config is None:
            return optimizer
        config = dict(config)
        if not self.automatic_optimization:  # Lightning would drop the monitor (with a warning): kept here
            self._plateau_monitor = config.pop("monitor", self.lr_monitor)
        elif isinstance(config["scheduler"], ReduceLROnPlateau) and config.get("interval", "epoch") == "epoch":
            # Lightning steps a plateau scheduler after on_train_epoch_end, where the epoch's checkpoint is saved, so
            # a resumed fit would never see the saved epoch's loss (its halving came an epoch late). rnnkit steps it
            # in on_train_epoch_end, before the checkpoint, and gives Lightning a frequency it never reaches, so
            # that Lightning still saves, restores and logs it but does not step it again.
            self._plateau_monitor = config["monitor"]
            config["frequency"] = _STEPPED_HERE
        return {"optimizer": optimizer, "lr_scheduler": config}

    def step_schedules(self, interval: str, means: dict[str, Tensor] | None = None) -> None:
        """Step the schedulers of ``interval`` (``"step"`` or ``"epoch"``) that Lightning does not (all of them under
        manual optimisation, a plateau scheduler under automatic); a plateau scheduler gets its monitored value
        from ``means`` (the epoch's means: the Trainer's metrics have them only after the epoch-end hooks)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval or (self.automatic_optimization and config.frequency != _STEPPED_HERE):
                continue
            if isinstance(config.scheduler, ReduceLROnPlateau):
                monitor = getattr(self, "_plateau_monitor", self.lr_monitor)
                value = (means or {}).get(monitor)
                if value is None:
                    raise ValueError(f"the plateau learning-rate schedule watches {monitor!r}, which was not "
                                     f"logged this epoch (logged: {', '.join(sorted(means or {})) or 'nothing'})")
                config.scheduler.step(float(value))
            else:
                config.scheduler.step()


class _NetworkModule(EpochMeans):
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
        return self.with_schedule(adam(self.parameters(), self.learning_rate, self.weight_decay))


class RegressionModule(_NetworkModule):
    """Mean-squared-error regression of ``network(x)`` onto ``y``; logs ``train_loss`` / ``val_loss``."""

    def loss(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.network(x), y)
        self.log_epoch_mean(f"{stage}_loss", loss, len(x))
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
        self.log_epoch_mean(f"{stage}_loss", loss, len(x))
        self.log_epoch_mean(f"{stage}_accuracy", accuracy, len(x))
        return loss
