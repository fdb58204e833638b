"""The native backend: torch.nn's own kernels (oneDNN on CPU, cuDNN on GPU) for what they compute exactly.

torch.nn has no functional RNN API, so this calls the same ``torch._VF`` entry points that
``nn.LSTM``/``nn.GRU``/``nn.RNN`` call, one layer at a time (rnnkit does stacking and inter-layer
dropout itself, so every backend draws the same dropout masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import GRUCell, LSTMCell, is_built_in
from rnnkit.cells.base import RecurrentCell, SequenceNoise, State

KERNELS = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn_tanh": _VF.rnn_tanh, "rnn_relu": _VF.rnn_relu}


def unsupported(cell: RecurrentCell, noise: SequenceNoise | None) -> str | None:
    """Why torch.nn's kernels cannot compute ``cell`` exactly, or None when they can. A subclass of rnnkit's cells
    is refused as the fused engine refuses it: whatever it overrides, torch.nn's kernels would not run it."""
    if not is_built_in(cell):
        return f"custom cell {type(cell).__name__} (torch.nn's kernels compute rnnkit's own cells only)"
    if cell.layer_norm:
        return "layer_norm=True (torch.nn has no layer-norm cells)"
    if isinstance(cell, LSTMCell) and cell.peepholes:
        return "peepholes=True (torch.nn's LSTM has no peepholes)"
    if isinstance(cell, GRUCell) and not cell.reset_after:
        return "reset_after=False (torch.nn's GRU computes the reset-after form only)"
    if cell.zoneout > 0:
        return f"zoneout={cell.zoneout} (torch.nn has no zoneout)"
    if noise is not None and noise.recurrent is not None:
        return f"recurrent_dropout={cell.recurrent_dropout} while training (torch.nn has no recurrent dropout)"
    return None


def stack_states(tensors: Sequence[Tensor]) -> Tensor:
    """``torch.stack(tensors)``; one tensor as a view with a new first dimension (no copy: 4-5 us less a call,
    which counts at T=1, where a generation loop calls a layer once a token)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tuple(tensors))


def packs(lengths: Tensor | None, steps: int) -> bool:
    """Whether torch.nn's kernels get this batch as a ``PackedSequence``: some sequence is shorter than ``steps``.
    (oneDNN's fused LSTM takes no packed batch; ``auto`` reads this too, see dispatch.lstm_padded_runs_fused.)"""
    return lengths is not None and bool((lengths < steps).any())


_WEIGHT_NAMES = {True: ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), False: ("weight_ih", "weight_hh")}


def flat_weights(cell: RecurrentCell) -> list[Tensor]:
    """torch.nn's weight list of one direction. Read from the cell's parameter dict: each ``cell.weight_ih`` goes
    through ``nn.Module.__getattr__`` (~0.6 us; 2.3 us for the four, of a ~45 us generation step)."""
    parameters = cell._parameters
    return [parameters[name] for name in _WEIGHT_NAMES[cell.bias]]


def run_stacked(
    cells: Sequence[RecurrentCell],
    x: Tensor,
    hx: tuple[Tensor, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer, 1 or 2 directions, on ``x [T, B, I]``, with the states as torch.nn holds them: ``hx`` one
    ``[D, B, H]`` tensor per state part (h, and c for an LSTM). Returns ``outputs [T, B, D*H]`` and the final
    states likewise. (The layer hands its users' ``[L*D, B, H]`` states over in this form: splitting them by cell
    and stacking them again cost 6-10 us of a ~45 us generation step.)"""
    first = cells[0]
    kernel = KERNELS[first.kind]
    weights = [w for cell in cells for w in flat_weights(cell)]
    packed = None
    if packs(lengths, x.shape[0]):
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        hx = tuple(h.index_select(1, packed.sorted_indices) for h in hx)
    hx_arg = hx if first.kind == "lstm" else hx[0]
    args = (weights, first.bias, 1, 0.0, first.training, len(cells) == 2)
    if packed is None:
        result = kernel(x, hx_arg, *args, False)
    else:
        result = kernel(packed.data, packed.batch_sizes, hx_arg, *args)
    outputs, finals = result[0], tuple(result[1:])
    if packed is not None:
        outputs, _ = pad_packed_sequence(
            PackedSequence(outputs, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
            total_length=x.shape[0],
        )
        finals = tuple(h.index_select(1, packed.unsorted_indices) for h in finals)
    return outputs, finals
