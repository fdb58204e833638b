"""The fused BPTT engine: one autograd Function per cell family, hand-written backward.

Each Function runs the recurrence over a whole (packed) sequence and saves only what its backward
needs; the input projection of all steps is one GEMM done outside the Function, so autograd computes
its gradients as large GEMMs too. :func:`run_direction` has the reference engine's contract.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell, is_built_in
from rnnkit.cells.base import SequenceNoise, State
from rnnkit.engine.fused import compiled, gru, lstm, simple
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
    return _start(cell, x, state, lengths, reverse, noise)()


def run_directions(cells, x: Tensor, states, lengths: Tensor | None,
                   noises) -> list[tuple[Tensor, State]]:
    """:func:`run_direction` for each of a layer's cells (the second, if any, in reverse). Where both directions'
    inference runs in the compiled loops, at batch x hidden size up to :data:`PAIRED_MAX_WIDTH`, the two loops run
    at once, each on a thread of its own with its whole batch (loops.cpp's PAIRED DIRECTIONS;
    :func:`compiled.paired_directions`)."""
    directions = list(zip(cells, states, noises))
    if len(directions) == 2 and _pairs(cells, x, states):
        kernels = compiled.ops()
        kernels.pair_loops(2)
        try:
            finishes = [_start(cell, x, state, lengths, d == 1, noise) for d, (cell, state, noise) in
                        enumerate(directions)]
        finally:
            kernels.pair_loops(0)  # (runs a loop still kept, were the second never started)
        return [finish() for finish in finishes]
    return [run_direction(cell, x, state, lengths, d == 1, noise) for d, (cell, state, noise) in
            enumerate(directions)]


#: a bidirectional layer's two inference loops run at once (one thread each, neither splitting its batch) up to this
#: batch x hidden size, at hidden sizes up to PAIRED_MAX_HIDDEN, from PAIRED_MIN_WORK steps x hidden size (below it
#: waking the second thread costs what the pair saves). Twentieth session, Zen 4 EPYC (2 threads, I=32, in-process
#: interleaved, 9 rounds), paired over one-after-the-other time, LSTM and GRU: B1-3 (no batch split) H32-512 T30-100
#: 0.58-0.97 but H32 T30 0.95-1.09, T10 H128-512 0.62-0.93, T10 H32-64 0.92-1.22; B4-32 (each direction's batch
#: split over the two threads) 0.53-0.96; B64 H64-256 0.80-0.95; past 16k: B256 H64-128 0.88-1.03, B64-256 H512
#: 0.98-1.08; H1024 B1 1.36-1.75, B8 0.72-1.43.
PAIRED_MAX_WIDTH = 16384
PAIRED_MAX_HIDDEN = 512
PAIRED_MIN_WORK = 1024


def pairs_at(steps: int, batch: int, hidden_size: int) -> bool:
    """Whether a bidirectional LSTM or GRU layer's inference of this shape runs its two compiled loops at once
    (on a CPU tensor the compiled loops take; see :func:`run_directions`): also only where a direction alone would
    split its batch over two threads at most (a pair runs on two), so that on a CPU of more threads a batch that
    each direction spreads over more of them is not paired (measured on two threads only)."""
    return (hidden_size <= PAIRED_MAX_HIDDEN and batch * hidden_size <= PAIRED_MAX_WIDTH
            and steps * hidden_size >= PAIRED_MIN_WORK and compiled.pairs_directions() and torch.get_num_threads() > 1
            and compiled.ops().batch_threads(batch) <= 2)


def _pairs(cells, x: Tensor, states) -> bool:
    """Whether a bidirectional layer's two directions run at once (see :func:`run_directions`)."""
    if not (isinstance(cells[0], (LSTMCell, GRUCell)) and type(cells[0]) is type(cells[1]) and compiled.usable_for(x)
            and pairs_at(x.shape[0], x.shape[1], cells[0].hidden_size)):
        return False
    return not (_saves(cells[0], x, states[0]) or _saves(cells[1], x, states[1]))


def _saves(cell: RecurrentCell, x: Tensor, state: State) -> bool:
    """Whether autograd will record the Functions (a backward may follow): else they keep nothing for one."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in (x, *state, *cell.parameters()))


def _start(cell: RecurrentCell, x: Tensor, state: State, lengths: Tensor | None, reverse: bool,
           noise: SequenceNoise | None) -> Callable[[], tuple[Tensor, State]]:
    """Start :func:`run_direction`'s work; the returned function gives its outputs once it is done (a compiled
    inference loop may wait for the other direction's: loops.cpp's PAIRED DIRECTIONS)."""
    steps, batch = x.shape[0], x.shape[1]
    packing = Packing.plan(steps, batch, lengths, reverse, x.device)
    # a time-major input that is no [N, I] view goes in as it is: the projection copies it into a pooled buffer
    as_is = packing.gather is None and x.dim() == 3 and not x.is_contiguous() and x.shape[1] > 1
    saves = _saves(cell, x, state)
    initial = tuple(packing.sort(s) for s in state)
    masks = Masks.pack(noise, packing)
    kernels = compiled.ops() if compiled.usable_for(x) else None
    if not saves and kernels is not None:  # inputs projected step by step
        family = lstm if isinstance(cell, LSTMCell) else gru if isinstance(cell, GRUCell) else simple
        results = family.infer(cell, packing.pack(x), *initial, packing, masks, kernels)

        def finish() -> tuple[Tensor, State]:
            sequence, *finals = results()
            return packing.unpack(sequence), tuple(packing.unsort(f) for f in finals)

        return finish
    sequence, finals = _functions(cell, x if as_is else packing.pack(x), initial, packing, masks, saves)
    done = packing.unpack(sequence), tuple(packing.unsort(f) for f in finals)
    return lambda: done


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
                                            packing, masks, cell.nonlinearity == "relu")
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
