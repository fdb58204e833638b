"""Keras' ``SimpleRNN(32)`` + ``Dense(1)`` forecaster, in rnnkit — on series of any length.

Keras::

    model = Sequential([SimpleRNN(32, input_shape=(None, 1)), Dense(1)])
    model.compile(optimizer="adam", loss="mse")

rnnkit: the same two layers; each batch below has a different length, which is what ``(None, 1)``
means in Keras. Run: ``python examples/simple_rnn_forecaster.py``.
"""

import math

import torch
from torch import nn

import rnnkit as rk


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rk.SimpleRNN(1, 32)  # SimpleRNN(32)
        self.dense = nn.Linear(32, 1)  # Dense(1)

    def forward(self, x):  # x: [B, T, 1], any T
        _, h = self.rnn(x)  # final state, like return_sequences=False
        return self.dense(h[-1])


def noisy_sines(batch, steps, generator):
    period = 10 + 20 * torch.rand(batch, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(batch, 1, generator=generator)
    t = torch.arange(steps + 1)
    series = torch.sin(2 * math.pi * t / period + phase) + 0.05 * torch.randn(batch, steps + 1, generator=generator)
    return series[:, :-1, None], series[:, -1:]


def main(steps=600, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Forecaster()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        length = int(torch.randint(10, 60, (1,), generator=generator))  # a different length every batch
        x, y = noisy_sines(64, length, generator)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = noisy_sines(1000, 45, generator)
    with torch.no_grad():
        mse = nn.functional.mse_loss(model(x), y).item()
    naive = nn.functional.mse_loss(x[:, -1], y).item()
    print(f"SimpleRNN(32) + Dense(1): test MSE {mse:.4f}; naive (last value) {naive:.4f}")
    return mse, naive


if __name__ == "__main__":
    main()
