"""The reference engine: a plain loop over time with autograd. It is the specification of BPTT.

Every other backend must give the same outputs, final states and gradients as :func:`run_direction`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.cells.base import RecurrentCell, SequenceNoise, State


def step_mask(lengths: Tensor | None, steps: int, device) -> Tensor | None:
    """``[T, B, 1]`` bool on ``device``, True where step ``t`` lies inside sequence ``b`` (None when no
    lengths)."""
    if lengths is None:
        return None
    lengths = lengths.to(device)
    return (torch.arange(steps, device=device)[:, None] < lengths[None, :]).unsqueeze(-1)


def run_direction(
    cell: RecurrentCell,
    x: Tensor,
    state: State,
    lengths: Tensor | None = None,
    reverse: bool = False,
    noise: SequenceNoise | None = None,
    observe: Callable[[int, State], None] | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` over ``x [T, B, I]`` from ``state`` (a tuple of ``[B, H]``).

    With ``lengths [B]``, steps ``t >= lengths[b]`` are padding: they leave sequence ``b``'s state
    unchanged and give a zero output. With ``reverse=True`` time runs from ``T-1`` down to ``0``, so
    each sequence starts at its own last valid step. Returns ``outputs [T, B, H]`` and the final state.
    ``observe(t, new_state)``, if given, sees every step's new state before padding is masked (the
    diagnostics use it to keep the gradient of each ``h_t``).
    """
    steps = x.shape[0]
    valid = step_mask(lengths, steps, x.device)
    outputs: list[Tensor | None] = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        output, new_state = cell(x[t], state, None if noise is None else noise.step(t))
        if observe is not None:
            observe(t, new_state)
        if valid is not None:
            output = torch.where(valid[t], output, 0.0)
            new_state = tuple(torch.where(valid[t], new, old) for new, old in zip(new_state, state))
        outputs[t] = output
        state = new_state
    return torch.stack(outputs), state
