"""Choosing and running a backend for one recurrent layer (one or two directions).

- ``reference``: :func:`rnnkit.engine.reference.run_direction`, the readable loop over time.
- ``native``: torch.nn's kernels, only for options torch.nn computes exactly.
- ``auto``: the fastest backend that computes the configuration exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rnnkit.cells.base import RecurrentCell, SequenceNoise, State
from rnnkit.engine import native
from rnnkit.engine.reference import run_direction

BACKENDS = ("auto", "reference", "native")


def choose_backend(cells: Sequence[RecurrentCell], noises: Sequence[SequenceNoise | None]) -> str:
    """The backend ``auto`` runs for these cells and noise."""
    if all(native.unsupported(cell, noise) is None for cell, noise in zip(cells, noises)):
        return "native"
    return "reference"


def run_layer(
    cells: Sequence[RecurrentCell],
    x: Tensor,
    states: Sequence[State],
    lengths: Tensor | None,
    noises: Sequence[SequenceNoise | None],
    backend: str = "auto",
) -> tuple[Tensor, list[State]]:
    """Run one layer: ``cells`` holds the forward cell and, if bidirectional, the reverse one.

    ``x [T, B, I]``, ``states`` one tuple of ``[B, H]`` per direction, ``lengths [B]`` or None.
    Returns ``outputs [T, B, D*H]`` (directions concatenated) and the final state per direction.

    Raises:
        ValueError: ``backend`` is unknown, or cannot compute these options (the message says which).
    """
    if backend == "auto":
        backend = choose_backend(cells, noises)
    if backend == "native":
        for cell, noise in zip(cells, noises):
            reason = native.unsupported(cell, noise)
            if reason is not None:
                raise ValueError(f"backend='native' cannot run {reason}; use backend='auto' or 'reference'")
        return native.run_layer(cells, x, states, lengths)
    if backend != "reference":
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    outputs, finals = [], []
    for direction, (cell, state, noise) in enumerate(zip(cells, states, noises)):
        out, final = run_direction(cell, x, state, lengths, reverse=direction == 1, noise=noise)
        outputs.append(out)
        finals.append(final)
    return torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0], finals
