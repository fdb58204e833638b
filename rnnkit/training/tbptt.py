"""Truncated backpropagation through time for long sequences.

A long sequence ``[B, T, F]`` is cut into chunks of ``k`` steps. Each chunk runs from the final state of
the one before, so the forward pass is exactly that of the whole sequence. That state is *detached*, so
gradients stop at the chunk boundary, and the optimiser steps after every chunk. Memory is bounded by
``k``, whatever ``T`` is, at the price of dependencies longer than ``k`` steps (Williams & Peng 1990).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from rnnkit._checks import check_positive_int
from rnnkit.training.modules import EpochMeans, adam


def detach_state(state):
    """A recurrent state (tensor, or tuple such as LSTM's ``(h, c)``) cut from the graph."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def time_chunks(tensor: Tensor, k: int) -> list[Tensor]:
    """``[B, T, ...]`` split along time into pieces of ``k`` steps (the last may be shorter)."""
    return list(tensor.split(check_positive_int("k", k), dim=1))


class StatefulRegressor(nn.Module):
    """A recurrent layer and a linear read-out at every step: ``(x [B, T, I], state) -> (y [B, T, O], state)``."""

    def __init__(self, layer: nn.Module, outputs: int) -> None:
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(layer.hidden_size * layer.num_directions, outputs)

    def forward(self, x: Tensor, state=None):
        out, state = self.rnn(x, state=state)
        return self.head(out), state


class TBPTTModule(EpochMeans):
    """Train a stateful network (``network(x, state) -> (y, state)``) on long sequences with truncated BPTT.

    Every batch ``(x [B, T, I], y [B, T, O])`` is processed ``k`` steps at a time: forward from the carried
    state, loss, backward, gradient clipping by norm (``gradient_clip``), optimiser step; then the state is
    detached and carried on. Logs the mean ``train_loss`` over the chunks. Pass ``gradient_clip=None`` to
    the Trainer (manual optimisation clips here).
    """

    def __init__(self, network: nn.Module, k: int, learning_rate: float = 1e-3,
                 loss: Callable[[Tensor, Tensor], Tensor] = nn.functional.mse_loss,
                 gradient_clip: float | None = 1.0) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.network, self.k, self.learning_rate = network, check_positive_int("k", k), learning_rate
        self.loss_function, self.gradient_clip = loss, gradient_clip

    def training_step(self, batch, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        x, y = batch
        state, losses = None, []
        for x_chunk, y_chunk in zip(time_chunks(x, self.k), time_chunks(y, self.k)):
            prediction, state = self.network(x_chunk, state)
            loss = self.loss_function(prediction, y_chunk)
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.gradient_clip is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
            optimizer.step()
            state = detach_state(state)
            losses.append(loss.detach())
        self.step_schedules("step")  # once a batch, however many chunks it had (see rnnkit.training.schedules)
        mean = torch.stack(losses).mean()
        self.log_epoch_mean("train_loss", mean, len(x))
        return mean

    def validation_step(self, batch, batch_idx: int) -> None:
        """The loss over the whole sequence, chunk by chunk with the state carried (no updates): ``val_loss``."""
        x, y = batch
        state, total, count = None, 0.0, 0
        for x_chunk, y_chunk in zip(time_chunks(x, self.k), time_chunks(y, self.k)):
            prediction, state = self.network(x_chunk, state)
            total = total + self.loss_function(prediction, y_chunk) * y_chunk.numel()
            count += y_chunk.numel()
        self.log_epoch_mean("val_loss", total / count, len(x))

    def configure_optimizers(self):
        return self.with_schedule(adam(self.parameters(), self.learning_rate))
