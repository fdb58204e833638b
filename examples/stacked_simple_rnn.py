"""Keras' three stacked ``SimpleRNN`` layers, in rnnkit.

Keras::

    model = Sequential([
        SimpleRNN(32, return_sequences=True, input_shape=(None, 1)),
        SimpleRNN(32, return_sequences=True),
        SimpleRNN(32),
        Dense(1, activation="sigmoid"),
    ])

rnnkit: ``rk.SimpleRNN(1, 32, num_layers=3)`` is the same stack (every layer but the last feeds its whole
sequence to the next). The task: does a sequence of +-1 steps end above where it started? Run:
``python examples/stacked_simple_rnn.py``.
"""

import torch
from torch import nn

import rnnkit as rk


class StackedClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rk.SimpleRNN(1, 32, num_layers=3)  # three stacked SimpleRNN(32)
        self.dense = nn.Linear(32, 1)  # Dense(1, activation="sigmoid"): the sigmoid is in the loss

    def forward(self, x):
        out, _ = self.rnn(x)  # [B, T, 32] from the third layer
        return self.dense(out[:, -1]).squeeze(-1)


def walks(batch, steps, generator):
    moves = torch.randint(0, 2, (batch, steps), generator=generator).float() * 2 - 1
    return moves[..., None], (moves.sum(1) > 0).float()


def main(steps=400, seed=0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = StackedClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, y = walks(64, 21, generator)  # odd length: no ties
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = walks(2000, 21, generator)
    with torch.no_grad():
        accuracy = ((model(x) > 0).float() == y).float().mean().item()
    print(f"3 x SimpleRNN(32) + Dense(1): test accuracy {accuracy:.3f} (chance 0.5)")
    return accuracy


if __name__ == "__main__":
    main()
