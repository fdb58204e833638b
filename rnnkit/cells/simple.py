"""Elman (simple) RNN cell."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit._checks import check_choice
from rnnkit.cells.base import RecurrentCell, State, StepNoise

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


class SimpleRNNCell(RecurrentCell):
    r"""One step of an Elman RNN.

    .. math::
        h_t = f(\mathrm{LN}(W_{ih} x_t) + b_{ih} + \mathrm{LN}(W_{hh} (m \odot h_{t-1})) + b_{hh})

    with :math:`f` = tanh (default) or relu, :math:`m` the recurrent-dropout mask and LN present only
    with ``layer_norm=True``; zoneout then mixes :math:`h_t` with :math:`h_{t-1}`. The output is
    :math:`h_t`. Shapes: ``x [B, I]``, state ``(h,)`` with ``h [B, H]``.

    ``recurrent_init`` defaults to ``"identity"`` for relu (the IRNN of Le et al. 2015) and to
    ``"orthogonal"`` for tanh.
    """

    num_gates = 1
    state_size = 1

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 recurrent_init: str | None = None, **options) -> None:
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, tuple(NONLINEARITIES))
        if recurrent_init is None:
            recurrent_init = "identity" if nonlinearity == "relu" else "orthogonal"
        super().__init__(input_size, hidden_size, recurrent_init=recurrent_init, **options)
        self.reset_parameters()

    @property
    def kind(self) -> str:
        return f"rnn_{self.nonlinearity}"

    def forward(self, x: Tensor, state: State, noise: StepNoise | None = None) -> tuple[Tensor, State]:
        (h,) = state
        pre = self.input_gates(x) + self.hidden_gates(self.dropped(h, noise))
        new = self.zone_out((NONLINEARITIES[self.nonlinearity](pre),), state, noise)
        return new[0], new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"
