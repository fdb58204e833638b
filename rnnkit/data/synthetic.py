r"""Long-dependency benchmarks, generated on the fly from a seed.

**Adding problem** (Hochreiter & Schmidhuber 1997): each step carries a value :math:`u_t \sim U(0, 1)` and
a marker; exactly two steps are marked, one in each half of the sequence; the target is the sum of the
two marked values. Always answering 1 (the mean of the target) scores MSE
:math:`\mathrm{Var}(u_a + u_b) = 2/12 \approx 0.167`: the trivial baseline.

**Copy-memory problem** (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016): ten symbols
from an alphabet of 8, then ``T`` blanks, a delimiter, and ten more blanks; the model must output blanks
until the delimiter's neighbours and then the ten symbols. Outputting blanks and then a uniform guess
scores cross-entropy :math:`10 \ln 8 / (T + 20)` per step: the trivial baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit._checks import check_positive_int


@dataclass(frozen=True)
class AddingTask:
    """Batches of the adding problem: inputs ``[B, T, 2]`` (value, marker) and targets ``[B, 1]``."""

    steps: int

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 for the adding problem (two marked steps), got {self.steps}")

    @property
    def baseline_mse(self) -> float:
        """MSE of always predicting 1, the target's mean: Var(U(0,1) + U(0,1)) = 1/6."""
        return 1.0 / 6.0

    def batch(self, size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        check_positive_int("size", size)
        half = self.steps // 2
        values = torch.rand(size, self.steps, generator=generator)
        first = torch.randint(0, half, (size,), generator=generator)
        second = torch.randint(half, self.steps, (size,), generator=generator)
        markers = torch.zeros(size, self.steps)
        rows = torch.arange(size)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        target = (values * markers).sum(1, keepdim=True)
        return torch.stack((values, markers), dim=-1), target


@dataclass(frozen=True)
class CopyTask:
    """Batches of the copy-memory problem: token ids ``[B, T+20]`` in and out.

    Ids: 0 blank, 1..8 symbols, 9 delimiter. ``inputs`` are to be one-hot encoded (10 classes);
    ``targets`` are class ids for every step (cross-entropy over 9 classes: blank and the symbols).
    """

    delay: int
    symbols: int = 8
    length: int = 10

    def __post_init__(self) -> None:
        check_positive_int("delay", self.delay)

    @property
    def steps(self) -> int:
        return self.delay + 2 * self.length

    @property
    def baseline_cross_entropy(self) -> float:
        """Blanks, then a uniform guess over the symbols for the last ``length`` steps."""
        return self.length * math.log(self.symbols) / self.steps

    def batch(self, size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        check_positive_int("size", size)
        data = torch.randint(1, self.symbols + 1, (size, self.length), generator=generator)
        inputs = torch.zeros(size, self.steps, dtype=torch.long)
        inputs[:, : self.length] = data
        inputs[:, self.delay + self.length - 1] = self.symbols + 1  # the delimiter
        targets = torch.zeros(size, self.steps, dtype=torch.long)
        targets[:, -self.length:] = data
        return inputs, targets
