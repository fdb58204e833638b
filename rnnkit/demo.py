"""A small end-to-end example: an LSTM layer + linear head forecasting a generated noisy sine wave."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from rich.progress import Progress
from torch import nn

import rnnkit as rk


@dataclass
class DemoResult:
    model_mse: float
    naive_mse: float
    epochs: int


def sine_windows(n_series: int, window: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``[N, window, 1]`` of noisy sines with random period and phase, and the next value ``[N, 1]``."""
    period = 12 + 24 * torch.rand(n_series, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(n_series, 1, generator=generator)
    t = torch.arange(window + 1).float()
    series = torch.sin(2 * math.pi * t / period + phase) + 0.05 * torch.randn(n_series, window + 1, generator=generator)
    return series[:, :window, None], series[:, window:]


class Forecaster(nn.Module):
    def __init__(self, hidden_size: int = 32) -> None:
        super().__init__()
        self.rnn = rk.LSTM(1, hidden_size)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return self.head(h[-1])


def run_demo(epochs: int = 30, seed: int = 0, show_progress: bool = True) -> DemoResult:
    """Train on 2000 windows, test on 500 fresh ones; compare with the naive (last value) forecast."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = sine_windows(2000, 24, generator)
    x_test, y_test = sine_windows(500, 24, generator)
    model = Forecaster()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("training LSTM forecaster", total=epochs)
        for _ in range(epochs):
            for batch in torch.randperm(len(x_train)).split(100):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
            progress.update(task, advance=1, description=f"training LSTM forecaster (loss {loss.item():.4f})")
    model.eval()
    with torch.no_grad():
        model_mse = nn.functional.mse_loss(model(x_test), y_test).item()
    naive_mse = nn.functional.mse_loss(x_test[:, -1], y_test).item()
    return DemoResult(model_mse, naive_mse, epochs)
