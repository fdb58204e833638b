"""What every recurrent cell shares: parameters laid out like torch.nn, options, noise, initialisation.

A cell computes one time step, ``forward(x_t, state, noise) -> (output, new_state)``, where ``state``
is always a tuple of ``[B, H]`` tensors: ``(h,)`` for SimpleRNN and GRU, ``(h, c)`` for LSTM.

Parameters (``G`` gates, ``H`` hidden units, ``I`` input features), named as in torch.nn:

- ``weight_ih`` ``[G*H, I]``, ``weight_hh`` ``[G*H, H]``, ``bias_ih``/``bias_hh`` ``[G*H]`` (if ``bias``)
- with ``layer_norm=True``: ``ln_ih_weight``/``ln_hh_weight`` ``[G*H]``, the gains of a layer
  normalisation (Ba et al. 2016) applied to each gate's slice of ``x W_ih^T`` and ``h W_hh^T``
  separately; the biases are added *after* normalisation, so they play the role of LN's shift.

Randomness is sampled once per sequence by :meth:`RecurrentCell.sample_noise` and passed to every
step, so that every engine backend sees exactly the same masks:

- ``recurrent_dropout`` (Gal & Ghahramani 2016): one inverted-dropout mask ``[B, H]`` per sequence,
  multiplied into ``h_{t-1}`` where it enters the recurrent product.
- ``zoneout`` (Krueger et al. 2017): each state unit keeps its previous value with probability ``p``,
  ``s_t = m_t * s_{t-1} + (1 - m_t) * s~_t`` with ``m_t ~ Bernoulli(p)`` while training and
  ``m_t = p`` (the expectation) in evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit._checks import check_choice, check_probability, check_positive_int

LAYER_NORM_EPS = 1e-5
INPUT_INITS = ("xavier_uniform", "uniform", "torch")
RECURRENT_INITS = ("orthogonal", "identity", "xavier_uniform", "torch")

State = tuple[Tensor, ...]


@dataclass(frozen=True)
class StepNoise:
    """The noise of one time step: what :meth:`RecurrentCell.forward` receives."""

    recurrent: Tensor | None  # [B, H] inverted-dropout mask on h_{t-1}, or None
    zoneout: tuple[Tensor, ...] | None  # per state tensor, [B, H] weight of the previous value


@dataclass(frozen=True)
class SequenceNoise:
    """The noise of one sequence, sampled once before the loop over time."""

    recurrent: Tensor | None  # [B, H]
    zoneout: tuple[Tensor, ...] | None  # per state tensor, [T, B, H] (expanded constant in eval)

    def step(self, t: int) -> StepNoise:
        zoneout = None if self.zoneout is None else tuple(m[t] for m in self.zoneout)
        return StepNoise(self.recurrent, zoneout)

    def to(self, dtype: torch.dtype) -> "SequenceNoise":
        """The same masks in ``dtype``."""
        return SequenceNoise(None if self.recurrent is None else self.recurrent.to(dtype),
                             None if self.zoneout is None else tuple(m.to(dtype) for m in self.zoneout))


def lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``torch.lerp`` (``start + weight (end - start)``) of tensors that may differ in dtype, computed in their
    promoted dtype: under ``torch.autocast`` a gate from a product comes in the autocast dtype (float16,
    bfloat16) while the state it mixes with may be float32, and ``torch.lerp`` takes one dtype only."""
    if start.dtype == end.dtype == weight.dtype:
        return torch.lerp(start, end, weight)
    dtype = torch.promote_types(torch.promote_types(start.dtype, end.dtype), weight.dtype)
    return torch.lerp(start.to(dtype), end.to(dtype), weight.to(dtype))


def layer_norm_gates(gates: Tensor, gain: Tensor, num_gates: int) -> Tensor:
    """Normalise each gate's ``H`` slice of ``gates [..., G*H]`` to zero mean, unit variance; scale by ``gain``."""
    split = gates.unflatten(-1, (num_gates, gates.shape[-1] // num_gates))  # [..., G, H]
    normed = F.layer_norm(split, split.shape[-1:], eps=LAYER_NORM_EPS)
    return normed.flatten(-2) * gain


class RecurrentCell(nn.Module):
    """Base of the cells. Subclasses set ``num_gates``, ``state_size`` and implement ``forward``.

    Args:
        input_size: features per time step ``I``.
        hidden_size: hidden units ``H``.
        bias: learn ``bias_ih`` and ``bias_hh``.
        layer_norm: layer-normalise each gate's input and recurrent pre-activation.
        recurrent_dropout: probability of dropping a unit of ``h_{t-1}`` (one mask per sequence).
        zoneout: probability that a state unit keeps its previous value.
        input_init: ``"xavier_uniform"`` (default, per gate block), ``"uniform"`` (U(-1/sqrt(H), 1/sqrt(H)),
            torch.nn's) or ``"torch"`` (``weight_ih`` *and the biases* as torch.nn initialises them;
            otherwise biases start at zero, LSTM's forget gate at ``forget_bias``).
        recurrent_init: ``"orthogonal"`` (default; one orthogonal block per gate), ``"identity"``,
            ``"xavier_uniform"`` or ``"torch"``.

    Raises:
        ValueError: a size is not a positive integer, a probability is outside ``[0, 1)``, an
            initialiser name is unknown.
    """

    num_gates: int = 1
    state_size: int = 1
    #: which torch.nn kernel family computes this cell ("rnn_tanh", "rnn_relu", "lstm", "gru")
    kind: str = "cell"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        input_init: str = "xavier_uniform",
        recurrent_init: str = "orthogonal",
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.layer_norm = bool(layer_norm)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        self.zoneout = check_probability("zoneout", zoneout)
        self.input_init = check_choice("input_init", input_init, INPUT_INITS)
        self.recurrent_init = check_choice("recurrent_init", recurrent_init, RECURRENT_INITS)

        gates = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size))
        if self.bias:
            self.bias_ih = nn.Parameter(torch.empty(gates))
            self.bias_hh = nn.Parameter(torch.empty(gates))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if self.layer_norm:
            self.ln_ih_weight = nn.Parameter(torch.empty(gates))
            self.ln_hh_weight = nn.Parameter(torch.empty(gates))

    # ---------------------------------------------------------------- initialisation
    def reset_parameters(self) -> None:
        """Initialise every parameter according to ``input_init`` and ``recurrent_init``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-bound, bound)  # torch.nn's scheme; refined below
            if self.input_init != "torch":
                self._init_input_weights()
            if self.recurrent_init != "torch":
                self._init_recurrent_weights()
            if self.input_init != "torch" and self.bias:
                self.bias_ih.zero_()
                self.bias_hh.zero_()
            if self.layer_norm:
                self.ln_ih_weight.fill_(1.0)
                self.ln_hh_weight.fill_(1.0)

    def _init_input_weights(self) -> None:
        if self.input_init == "xavier_uniform":
            for block in self.weight_ih.chunk(self.num_gates, 0):
                nn.init.xavier_uniform_(block)

    def _init_recurrent_weights(self) -> None:
        for block in self.weight_hh.chunk(self.num_gates, 0):
            if self.recurrent_init == "orthogonal":
                nn.init.orthogonal_(block)
            elif self.recurrent_init == "identity":
                nn.init.eye_(block)
            else:
                nn.init.xavier_uniform_(block)

    # ---------------------------------------------------------------- state and noise
    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """Zero state: a tuple of ``state_size`` tensors ``[batch, H]``."""
        dtype = dtype if dtype is not None else self.weight_ih.dtype
        device = device if device is not None else self.weight_ih.device
        return tuple(
            torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
            for _ in range(self.state_size)
        )

    def sample_noise(self, steps: int, batch: int, device=None, dtype=None) -> SequenceNoise | None:
        """Draw this sequence's recurrent-dropout and zoneout masks (None when there is no noise)."""
        if not (self.zoneout > 0 or (self.training and self.recurrent_dropout > 0)):
            return None  # (before the parameters' lookups below: a layer draws for every cell on every call)
        dtype = dtype if dtype is not None else self.weight_ih.dtype
        device = device if device is not None else self.weight_ih.device
        shape = (batch, self.hidden_size)
        recurrent = None
        if self.training and self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            recurrent = torch.bernoulli(torch.full(shape, keep, device=device, dtype=dtype)) / keep
        zoneout = None
        if self.zoneout > 0:
            full = (steps, *shape)
            if self.training:
                zoneout = tuple(
                    torch.bernoulli(torch.full(full, self.zoneout, device=device, dtype=dtype))
                    for _ in range(self.state_size)
                )
            else:
                expected = torch.tensor(self.zoneout, device=device, dtype=dtype).expand(full)
                zoneout = (expected,) * self.state_size
        if recurrent is None and zoneout is None:
            return None
        return SequenceNoise(recurrent, zoneout)

    # ---------------------------------------------------------------- pieces of a step
    def project(self, inputs: Tensor, weight: Tensor, bias: Tensor | None, ln_gain: Tensor | None) -> Tensor:
        """``LN(inputs @ weight^T) + bias``, layer norm per gate slice when ``ln_gain`` is given."""
        if ln_gain is None:
            return F.linear(inputs, weight, bias)
        normed = layer_norm_gates(inputs @ weight.t(), ln_gain, weight.shape[0] // self.hidden_size)
        return normed if bias is None else normed + bias

    def input_gates(self, x: Tensor) -> Tensor:
        """Input contribution to all gates, ``[..., G*H]``."""
        return self.project(x, self.weight_ih, self.bias_ih, self.ln_ih_weight if self.layer_norm else None)

    def hidden_gates(self, h: Tensor, rows: slice = slice(None)) -> Tensor:
        """Recurrent contribution to the gates selected by ``rows`` (a slice of the ``G*H`` rows)."""
        bias = None if self.bias_hh is None else self.bias_hh[rows]
        gain = self.ln_hh_weight[rows] if self.layer_norm else None
        return self.project(h, self.weight_hh[rows], bias, gain)

    @staticmethod
    def dropped(h: Tensor, noise: StepNoise | None) -> Tensor:
        """``h_{t-1}`` as it enters the recurrent product, with the recurrent-dropout mask applied."""
        if noise is None or noise.recurrent is None:
            return h
        return h * noise.recurrent

    @staticmethod
    def zone_out(new: State, old: State, noise: StepNoise | None) -> State:
        """Mix each new state tensor with the old one by the zoneout weights."""
        if noise is None or noise.zoneout is None:
            return new
        return tuple(lerp(n, o, m) for n, o, m in zip(new, old, noise.zoneout))

    def extra_repr(self) -> str:
        options = [f"{self.input_size}, {self.hidden_size}"]
        if not self.bias:
            options.append("bias=False")
        if self.layer_norm:
            options.append("layer_norm=True")
        if self.recurrent_dropout:
            options.append(f"recurrent_dropout={self.recurrent_dropout}")
        if self.zoneout:
            options.append(f"zoneout={self.zoneout}")
        return ", ".join(options)

    def forward(self, x: Tensor, state: State, noise: StepNoise | None = None) -> tuple[Tensor, State]:
        raise NotImplementedError
