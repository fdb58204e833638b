"""The fused BPTT engine: one autograd Function per cell family, hand-written backward.

Each Function runs the recurrence over a whole (packed) sequence and saves only what its backward
needs; the input projection of all steps is one GEMM done outside the Function, so autograd computes
its gradients as large GEMMs too. :func:`run_direction` has the reference engine's contract.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell, is_built_in
from rnnkit.cells.base import SequenceNoise, State
from rnnkit.engine.fused import compiled, gru, lstm
from rnnkit.engine.fused.common import Masks, run_function
from rnnkit.engine.fused.gru import FusedGRU
from rnnkit.engine.fused.inputs import input_gates
from rnnkit.engine.fused.lstm import FusedLSTM
from rnnkit.engine.fused.packing import Packing
from rnnkit.engine.fused.simple import FusedSimpleRNN


def unsupported(cell: RecurrentCell) -> str | None:
    """Why the fused engine cannot run ``cell``, or None when it can."""
    if not is_built_in(cell):
        return f"custom cell {type(cell).__name__} (the fused engine knows rnnkit's own cells only)"
    return None


def run_direction(
    cell: RecurrentCell,
    x: Tensor,
    state: State,
    lengths: Tensor | None = None,
    reverse: bool = False,
    noise: SequenceNoise | None = None,
) -> tuple[Tensor, State]:
    """Same contract as :func:`rnnkit.engine.reference.run_direction`: ``x [T, B, I]`` -> ``[T, B, H]``."""
    steps, batch = x.shape[0], x.shape[1]
    packing = Packing.plan(steps, batch, lengths, reverse, x.device)
    # a time-major input that is no [N, I] view goes in as it is: the projection copies it into a pooled buffer
    as_is = packing.gather is None and x.dim() == 3 and not x.is_contiguous() and x.shape[1] > 1
    # whether autograd will record the Functions (a backward may follow): else they keep nothing for one
    saves = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *state, *cell.parameters()))
    initial = tuple(packing.sort(s) for s in state)
    masks = Masks.pack(noise, packing)
    kernels = compiled.ops() if compiled.usable_for(x) else None
    if not saves and kernels is not None and isinstance(cell, (LSTMCell, GRUCell)):  # inputs projected step by step
        family = lstm if isinstance(cell, LSTMCell) else gru
        sequence, *finals = family.infer(cell, packing.pack(x), *initial, packing, masks, kernels)
    else:
        sequence, finals = _functions(cell, x if as_is else packing.pack(x), initial, packing, masks, saves)
    return packing.unpack(sequence), tuple(packing.unsort(f) for f in finals)


def _functions(cell: RecurrentCell, x: Tensor, initial: State, packing: Packing, masks: Masks,
               saves: bool) -> tuple[Tensor, State]:
    """The input projection and the cell family's Function: every step's state ``[N, H]`` and the final ones."""
    # gates [N, G*H]: one GEMM for every step, and the Function works in it. b_hh goes into the gates as it is
    # (in all but the reset-after GRU, which scales part of it by r): the input projection may add it with b_ih,
    # and then the Function gets none
    additive = not (isinstance(cell, GRUCell) and cell.reset_after)
    gates, folded = input_gates(cell, x, cell.bias_hh if additive else None, saves)
    bias_hh = None if folded else cell.bias_hh
    gain = cell.ln_hh_weight if cell.layer_norm else None
    if isinstance(cell, SimpleRNNCell):
        sequence, final_h, _ = run_function(FusedSimpleRNN, saves, gates, initial[0], cell.weight_hh, bias_hh, gain,
                                            packing, masks, cell.nonlinearity == "relu", saves)
        return sequence, (final_h,)
    if isinstance(cell, GRUCell):
        sequence, final_h, _ = run_function(FusedGRU, saves, gates, initial[0], cell.weight_hh, bias_hh, gain,
                                            packing, masks, cell.reset_after)
        return sequence, (final_h,)
    sequence, final_h, final_c, _ = run_function(
        FusedLSTM, saves, gates, *initial, cell.weight_hh, bias_hh, gain,
        cell.weight_peephole if cell.peepholes else None, cell.ln_cell_weight if cell.layer_norm else None,
        cell.ln_cell_bias if cell.layer_norm else None, packing, masks)
    return sequence, (final_h, final_c)
