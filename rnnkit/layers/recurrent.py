"""Recurrent layers: a stack of cells scanned over time, optionally bidirectional.

``RNN(cell=...)`` is the generic layer; ``SimpleRNN``, ``LSTM`` and ``GRU`` fix the cell.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit._checks import check_choice, check_lengths, check_positive_int, check_probability, describe
from rnnkit.cells import CELLS, GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell
from rnnkit.engine.dispatch import BACKENDS, autocasting, run_layer_stacked


def _looks_like_a_state(lengths) -> bool:
    """Whether ``lengths`` is what torch.nn's second argument (hx) would be: a floating tensor of 2 or 3
    dimensions (lengths have one), or a tuple or list of them."""
    parts = lengths if isinstance(lengths, (tuple, list)) else (lengths,)
    return bool(parts) and all(isinstance(p, Tensor) and p.is_floating_point() and p.dim() >= 2 for p in parts)


def _cell_class(cell) -> type[RecurrentCell]:
    if isinstance(cell, str):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))} or a RecurrentCell class; got {cell!r}")
        return CELLS[cell]
    if isinstance(cell, type) and issubclass(cell, RecurrentCell):
        return cell
    raise TypeError(f"cell must be a cell name or a RecurrentCell subclass, got {cell!r}")


def _check_cell_options(cell_class: type[RecurrentCell], options: dict) -> None:
    known = set()
    for klass in cell_class.__mro__:
        if issubclass(klass, RecurrentCell):
            known |= set(inspect.signature(klass.__init__).parameters)
    known -= {"self", "options", "input_size", "hidden_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{cell_class.__name__} has no option {unknown[0]!r}; its options are {', '.join(sorted(known))}")


class RNN(nn.Module):
    r"""A stack of ``num_layers`` recurrent layers over sequences of any length.

    Args:
        input_size: features per step ``I``.
        hidden_size: hidden units per direction ``H``.
        num_layers: stacked layers ``L``; each feeds its whole output sequence to the next.
        cell: ``"rnn"`` (Elman), ``"lstm"``, ``"gru"`` or a :class:`~rnnkit.cells.RecurrentCell` class.
        bidirectional: run a second cell backwards in time; outputs are concatenated, ``D = 2``.
        batch_first: inputs and outputs are ``[B, T, F]`` (default) instead of ``[T, B, F]``.
        dropout: dropout probability on the outputs of every layer but the last (training only).
        backend: ``"auto"`` (fastest exact one), ``"fused"`` (hand-written BPTT), ``"reference"`` (the
            readable loop over time) or ``"native"`` (torch.nn's kernels, for what torch.nn computes).
        **cell_options: passed to every cell, e.g. ``layer_norm``, ``recurrent_dropout``, ``zoneout``,
            ``nonlinearity``, ``reset_after``, ``peepholes``, ``forget_bias``, ``bias``, initialisers.

    Forward: ``layer(x, lengths=None, state=None) -> (outputs, final_state)``

    - ``x``: ``[B, T, I]`` (``[T, B, I]`` if not batch_first), ``[T, I]`` for one unbatched sequence, or
      a :class:`~torch.nn.utils.rnn.PackedSequence` (then outputs are packed too).
    - ``lengths``: ``[B]`` integers in ``[1, T]``; steps past a sequence's length are padding. They never
      affect states, outputs (zero there) or gradients.
    - ``state``: initial state, ``[L*D, B, H]`` (LSTM: a pair ``(h_0, c_0)``); zeros if None.
    - ``outputs``: ``[B, T, D*H]``; ``final_state``: like ``state``. Shapes as in torch.nn.

    Raises:
        ValueError/TypeError: bad sizes, shapes, lengths, dtype or device, an unknown cell or option,
            or a backend that cannot compute the options (each message names the argument and value).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, cell,
                 bidirectional: bool = False, batch_first: bool = True, dropout: float = 0.0,
                 backend: str = "auto", **cell_options) -> None:
        super().__init__()
        cell_class = _cell_class(cell)
        _check_cell_options(cell_class, cell_options)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.dropout = check_probability("dropout", dropout)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.num_directions = 2 if self.bidirectional else 1
        #: set by rnnkit.diagnostics to see every step's state: ``(layer, direction, t, state)``
        self.step_observer = None
        self.cells = nn.ModuleList(
            cell_class(input_size if layer == 0 else hidden_size * self.num_directions, hidden_size, **cell_options)
            for layer in range(num_layers)
            for _ in range(self.num_directions)
        )

    @property
    def state_size(self) -> int:
        return self.cells[0].state_size

    def cell(self, layer: int, direction: int = 0) -> RecurrentCell:
        """The cell of ``layer`` (0-based) and ``direction`` (0 forward, 1 reverse)."""
        return self.cells[layer * self.num_directions + direction]

    # ---------------------------------------------------------------- forward
    def forward(self, x, lengths=None, state=None):
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths must be None when x is a PackedSequence (it carries its own lengths)")
            x, lengths = pad_packed_sequence(packed, batch_first=self.batch_first)
        # the cells as a tuple: indexing or slicing the ModuleList costs 4-7 us a time, which adds up at T=1
        # (a generation loop calls the layer once a token); read from the module dicts, as ModuleList iterates them
        # (``tuple(self.cells)`` goes through nn.Module.__getattr__ first: 1.0 against 0.14 us)
        every_cell = tuple(self._modules["cells"]._modules.values())
        x = self._check_input(x, every_cell[0])
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)  # [T, 1, I]
        elif self.batch_first:
            x = x.transpose(0, 1)  # [T, B, I]
        steps, batch = x.shape[0], x.shape[1]
        state_size = every_cell[0].state_size
        if lengths is not None:
            if _looks_like_a_state(lengths):
                example = "state=(h_0, c_0)" if state_size == 2 else "state=h_0"
                raise TypeError(f"lengths (the second argument) got {describe(lengths)}: rnnkit's layers take "
                                f"(x, lengths=None, state=None), so initial states go in by name: layer(x, {example}) "
                                "(torch.nn's second argument, hx)")
            lengths = check_lengths(lengths, batch, steps)
        hx = self._initial_states(state, batch, unbatched, x, every_cell)

        finals = []
        directions = self.num_directions
        for layer in range(self.num_layers):
            index = slice(layer * directions, (layer + 1) * directions)
            cells = every_cell[index]
            # in the parameters' dtype, which x's is but under autocast (a bfloat16 1 / keep would be rounded)
            # (on the parameters' device, which x is on: a cell without noise returns before looking at any)
            noises = [cell.sample_noise(steps, batch) for cell in cells]
            observe = None if self.step_observer is None else functools.partial(self.step_observer, layer)
            # the states stay as the user gave them, [L*D, B, H], and go to torch.nn's kernels as its [D, B, H]
            # slices (the whole of them for one layer): no splitting into cells and stacking again
            layer_hx = hx if hx is None or self.num_layers == 1 else tuple(h[index] for h in hx)
            x, layer_final = run_layer_stacked(cells, x, layer_hx, lengths, noises, self.backend, observe)
            finals.append(layer_final)
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)

        final = finals[0] if len(finals) == 1 else tuple(torch.cat([f[k] for f in finals]) for k in range(state_size))
        if unbatched:
            outputs, final = x.squeeze(1), tuple(f.squeeze(1) for f in final)
        else:
            outputs = x.transpose(0, 1) if self.batch_first else x
        final_state = final if state_size > 1 else final[0]
        if packed is not None:
            outputs = _repack(outputs, lengths, packed, self.batch_first)
        return outputs, final_state

    def _check_input(self, x, first_cell: RecurrentCell) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor or PackedSequence, got {type(x).__name__}")
        if x.dim() not in (2, 3):
            layout = "[B, T, I]" if self.batch_first else "[T, B, I]"
            raise ValueError(f"x must be 3-D {layout} (or 2-D [T, I] unbatched), got shape {list(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last dim, "
                             f"got shape {list(x.shape)}")
        # from the parameter dict, not through nn.Module.__getattr__ (~0.5 us less a call), where it is (a
        # parametrization, torch.nn.utils.parametrize, moves it out)
        weight = first_cell._parameters.get("weight_ih")
        if weight is None:
            weight = first_cell.weight_ih
        if x.dtype != weight.dtype and not (x.is_floating_point() and autocasting(x)):
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {weight.dtype}; "
                            f"convert one of them (e.g. layer.to({x.dtype})), or run under torch.autocast")
        if not (x.is_cpu and weight.is_cpu) and x.device != weight.device:  # (is_cpu: 0.07 us, .device 0.4)
            raise ValueError(f"x is on {x.device} but the layer's parameters are on {weight.device}")
        if x.shape[0 if x.dim() == 2 or not self.batch_first else 1] == 0:
            raise ValueError(f"x must have at least one time step, got shape {list(x.shape)}")
        return x

    def _initial_states(self, state, batch: int, unbatched: bool, x: Tensor,
                        cells: tuple[RecurrentCell, ...]) -> tuple[Tensor, ...] | None:
        """The user's initial state, checked: one ``[L*D, B, H]`` tensor per state part (an unbatched ``[L*D, H]``
        one comes back as ``[L*D, 1, H]``), or None for zeros."""
        if state is None:
            return None
        parts = tuple(state) if isinstance(state, (tuple, list)) else (state,)
        state_size = cells[0].state_size
        if len(parts) != state_size or not all(isinstance(p, Tensor) for p in parts):
            expected = "a pair (h_0, c_0) of tensors" if state_size == 2 else "one tensor h_0"
            got = f"{type(state).__name__} of {len(parts)}" if isinstance(state, (tuple, list)) else type(state).__name__
            raise TypeError(f"state must be {expected} for {type(self).__name__}, got {got}")
        rows = self.num_layers * self.num_directions
        expected_shape = (rows, self.hidden_size) if unbatched else (rows, batch, self.hidden_size)
        for name, part in zip(("h_0", "c_0"), parts):
            if part.shape != expected_shape:
                raise ValueError(f"state {name} must have shape [L*D, B, H] = {list(expected_shape)}, "
                                 f"got {list(part.shape)}")
            mixed = part.dtype != x.dtype and not (part.is_floating_point() and autocasting(x))
            if mixed or (not (part.is_cpu and x.is_cpu) and part.device != x.device):
                raise TypeError(f"state {name} must match x's dtype and device ({x.dtype}, {x.device}), "
                                f"got ({part.dtype}, {part.device})")
        return tuple(p.unsqueeze(1) for p in parts) if unbatched else parts

    def extra_repr(self) -> str:
        options = [f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"]
        if self.bidirectional:
            options.append("bidirectional=True")
        if not self.batch_first:
            options.append("batch_first=False")
        if self.dropout:
            options.append(f"dropout={self.dropout}")
        options.append(f"backend={self.backend!r}")
        return ", ".join(options)

    # ---------------------------------------------------------------- torch.nn interchange
    @classmethod
    def from_torch(cls, module: nn.RNNBase, backend: str = "auto") -> "RNN":
        """A layer with exactly the weights and options of ``module`` (nn.LSTM, nn.GRU or nn.RNN)."""
        from rnnkit.layers.interchange import from_torch

        return from_torch(cls, module, backend)

    def to_torch(self) -> nn.RNNBase:
        """The equivalent nn.LSTM / nn.GRU / nn.RNN with copied weights, same dtype and device."""
        from rnnkit.layers.interchange import to_torch

        return to_torch(self)


def _repack(outputs: Tensor, lengths: Tensor, like: PackedSequence, batch_first: bool) -> PackedSequence:
    """Pack padded ``outputs`` in the same order as the input ``like``."""
    if like.sorted_indices is None:
        return pack_padded_sequence(outputs, lengths.cpu(), batch_first=batch_first)
    order = like.sorted_indices
    data = pack_padded_sequence(outputs.index_select(0 if batch_first else 1, order.to(outputs.device)),
                                lengths.index_select(0, order.to(lengths.device)).cpu(), batch_first=batch_first).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class SimpleRNN(RNN):
    """Elman RNN layer (``cell="rnn"``); ``nonlinearity="tanh"`` or ``"relu"``. See :class:`RNN`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **options) -> None:
        super().__init__(input_size, hidden_size, num_layers, cell=SimpleRNNCell, **options)


class LSTM(RNN):
    """LSTM layer (``cell="lstm"``); final state is a pair ``(h_n, c_n)``. See :class:`RNN`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **options) -> None:
        super().__init__(input_size, hidden_size, num_layers, cell=LSTMCell, **options)


class GRU(RNN):
    """GRU layer (``cell="gru"``); ``reset_after=False`` for Cho et al.'s original form. See :class:`RNN`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **options) -> None:
        super().__init__(input_size, hidden_size, num_layers, cell=GRUCell, **options)
