"""Gated recurrent unit (Cho et al. 2014), in both the reset-after and the original reset-before form."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import RecurrentCell, State, StepNoise, lerp


class GRUCell(RecurrentCell):
    r"""One step of a GRU. Gate order in the weights is torch.nn's: reset, update, new.

    With :math:`\tilde h = m \odot h_{t-1}` (recurrent dropout) and LN only when ``layer_norm=True``:

    .. math::
        \begin{aligned}
        r &= \sigma(\mathrm{LN}(W_{ir} x_t) + b_{ir} + \mathrm{LN}(W_{hr}\tilde h) + b_{hr}) \\
        z &= \sigma(\mathrm{LN}(W_{iz} x_t) + b_{iz} + \mathrm{LN}(W_{hz}\tilde h) + b_{hz}) \\
        n &= \tanh(\mathrm{LN}(W_{in} x_t) + b_{in} + r \odot (\mathrm{LN}(W_{hn}\tilde h) + b_{hn}))
             && \text{reset\_after=True (torch.nn, cuDNN, Keras default)} \\
        n &= \tanh(\mathrm{LN}(W_{in} x_t) + b_{in} + \mathrm{LN}(W_{hn}(r \odot \tilde h)) + b_{hn})
             && \text{reset\_after=False (Cho et al. 2014)} \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}
        \end{aligned}

    Zoneout then mixes :math:`h_t` with :math:`h_{t-1}`; the output is :math:`h_t`.
    Shapes: ``x [B, I]``, state ``(h,)`` with ``h [B, H]``.
    """

    num_gates = 3
    state_size = 1
    kind = "gru"

    def __init__(self, input_size: int, hidden_size: int, *, reset_after: bool = True, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        self.reset_after = bool(reset_after)
        self.reset_parameters()

    def forward(self, x: Tensor, state: State, noise: StepNoise | None = None) -> tuple[Tensor, State]:
        (h,) = state
        hidden = self.hidden_size
        h_in = self.dropped(h, noise)
        x_r, x_z, x_n = self.input_gates(x).chunk(3, dim=-1)
        if self.reset_after:
            h_r, h_z, h_n = self.hidden_gates(h_in).chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
        else:
            h_r, h_z = self.hidden_gates(h_in, slice(0, 2 * hidden)).chunk(2, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + self.hidden_gates(r * h_in, slice(2 * hidden, 3 * hidden)))
        new = self.zone_out((lerp(n, h, z),), state, noise)
        return new[0], new

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if not self.reset_after:
            extra += ", reset_after=False"
        return extra
