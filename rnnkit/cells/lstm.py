"""Long short-term memory cell (Hochreiter & Schmidhuber 1997), with optional peepholes and layer norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells.base import LAYER_NORM_EPS, RecurrentCell, State, StepNoise


class LSTMCell(RecurrentCell):
    r"""One step of an LSTM. Gate order in the weights is torch.nn's: input, forget, cell, output.

    .. math::
        \begin{aligned}
        [\hat i, \hat f, \hat g, \hat o] &= \mathrm{LN}(W_{ih} x_t) + b_{ih}
                                          + \mathrm{LN}(W_{hh}(m \odot h_{t-1})) + b_{hh} \\
        i &= \sigma(\hat i + p_i \odot c_{t-1}), \quad f = \sigma(\hat f + p_f \odot c_{t-1}),
             \quad g = \tanh(\hat g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        o &= \sigma(\hat o + p_o \odot c_t) \\
        h_t &= o \odot \tanh(\mathrm{LN}_c(c_t))
        \end{aligned}

    Peephole terms :math:`p` appear only with ``peepholes=True`` (Gers & Schmidhuber 2000; parameter
    ``weight_peephole [3*H]`` ordered i, f, o); LN only with ``layer_norm=True`` (which adds
    ``ln_cell_weight``/``ln_cell_bias [H]``, a full affine LN of the cell state, Ba et al. 2016).
    Zoneout then mixes ``(h_t, c_t)`` with ``(h_{t-1}, c_{t-1})``; the output is ``h_t``.
    Shapes: ``x [B, I]``, state ``(h, c)``, each ``[B, H]``.

    Args:
        forget_bias: initial value of ``bias_ih``'s forget-gate slice (Jozefowicz et al. 2015; Keras'
            ``unit_forget_bias``). Ignored with ``input_init="torch"`` and ``bias=False``.
        peepholes: add peephole connections from the cell state to the gates.
    """

    num_gates = 4
    state_size = 2
    kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int, *, forget_bias: float = 1.0,
                 peepholes: bool = False, **options) -> None:
        super().__init__(input_size, hidden_size, **options)
        self.forget_bias = float(forget_bias)
        self.peepholes = bool(peepholes)
        if self.peepholes:
            self.weight_peephole = nn.Parameter(torch.empty(3 * hidden_size))
        if self.layer_norm:
            self.ln_cell_weight = nn.Parameter(torch.empty(hidden_size))
            self.ln_cell_bias = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            if self.bias and self.input_init != "torch":
                self.bias_ih[self.hidden_size:2 * self.hidden_size].fill_(self.forget_bias)
            if self.peepholes:
                self.weight_peephole.zero_()
            if self.layer_norm:
                self.ln_cell_weight.fill_(1.0)
                self.ln_cell_bias.zero_()

    def forward(self, x: Tensor, state: State, noise: StepNoise | None = None) -> tuple[Tensor, State]:
        h, c = state
        gates = self.input_gates(x) + self.hidden_gates(self.dropped(h, noise))  # [B, 4H]
        i, f, g, o = gates.chunk(4, dim=-1)
        if self.peepholes:
            p_i, p_f, p_o = self.weight_peephole.chunk(3)
            i = i + p_i * c
            f = f + p_f * c
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.peepholes:
            o = o + p_o * c_new
        c_shown = c_new
        if self.layer_norm:
            c_shown = F.layer_norm(c_new, (self.hidden_size,), self.ln_cell_weight, self.ln_cell_bias,
                                   eps=LAYER_NORM_EPS)
        h_new = torch.sigmoid(o) * torch.tanh(c_shown)
        new = self.zone_out((h_new, c_new), state, noise)
        return new[0], new

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.peepholes:
            extra += ", peepholes=True"
        return extra
