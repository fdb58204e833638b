"""The packed layout of the fused engine.

The batch is sorted by length (longest first) and, for the reverse direction, each sequence is reversed
within its length, so every run goes forward in time and step ``t`` concerns exactly rows ``[0, n_t)``
(``n_t`` = number of sequences longer than ``t``). Per-step data lives in a packed buffer ``[N, F]``,
``N = sum n_t``, whose per-step blocks are views made by one ``split``: no masking and no work on padding.
State buffers have an extra first block of ``B`` rows holding the initial state, so that block ``t`` of
``[B + N, H]`` is the state *before* step ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packing:
    steps: int  # T
    batch: int  # B
    batch_sizes: list[int]  # n_t for t in 0..T-1
    order: Tensor | None  # [B] sorted row -> original row (None: identity)
    inverse: Tensor | None  # [B] original row -> sorted row
    gather: Tensor | None  # [N] packed row -> row of the [T*B] time-major input (None: identity)
    last: Tensor | None  # [B] sorted row -> packed row of its last step (None: the last block)
    previous: Tensor | None  # [N] packed row -> row of the [B+N] state buffer before that step (None: [:N])
    sequence: Tensor | None  # [N] packed row -> its sorted row (None: every block is 0..B-1)

    @property
    def rows(self) -> int:
        return sum(self.batch_sizes)

    @property
    def padded(self) -> bool:
        return self.rows < self.steps * self.batch

    @classmethod
    def plan(cls, steps: int, batch: int, lengths: Tensor | None, reverse: bool, device) -> "Packing":
        """The layout for ``lengths [B]`` (None: all ``steps`` long), with its index tensors on ``device``.

        Planned on the CPU from the lengths there (a GPU's are copied over first), and the index tensors
        moved to ``device`` in one copy: no step waits on the device for a length."""
        if lengths is not None:
            lengths = lengths.cpu()
        if lengths is None or bool((lengths == steps).all()):
            gather = None
            if reverse:
                times = torch.arange(steps - 1, -1, -1, device=device)
                gather = (times[:, None] * batch + torch.arange(batch, device=device)).reshape(-1)
            return cls(steps, batch, [batch] * steps, None, None, gather, None, None, None)
        sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
        counts = torch.bincount(sorted_lengths - 1, minlength=steps).flip(0).cumsum(0).flip(0)  # n_t
        batch_sizes = [n for n in counts.tolist() if n > 0]  # steps past the longest sequence are dropped
        valid = torch.arange(steps)[:, None] < sorted_lengths[None, :]  # [T, B]
        step, row = valid.nonzero(as_tuple=True)  # time-major: exactly the packed order
        time = sorted_lengths[row] - 1 - step if reverse else step
        gather = time * batch + order[row]
        starts = torch.cumsum(counts, 0) - counts  # first packed row of each step
        last = starts[sorted_lengths - 1] + torch.arange(batch)
        previous = torch.where(step == 0, row, batch + starts[(step - 1).clamp(min=0)] + row)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch)
        indices = (order, inverse, gather, last, previous, row)
        if torch.device(device).type != "cpu":
            indices = torch.cat(indices).to(device).split([len(i) for i in indices])
        return cls(steps, batch, batch_sizes, *indices)

    # ---------------------------------------------------------------- differentiable moves
    def pack(self, x: Tensor) -> Tensor:
        """``[T, B, F]`` time-major -> packed ``[N, F]``."""
        flat = x.reshape(self.steps * self.batch, x.shape[-1])
        return flat if self.gather is None else flat.index_select(0, self.gather)

    def unpack(self, packed: Tensor) -> Tensor:
        """Packed ``[N, F]`` -> ``[T, B, F]`` with zeros on padding (``[T, B, F]`` as it is)."""
        if self.gather is None:
            return packed if packed.dim() == 3 else packed.view(self.steps, self.batch, -1)
        if self.padded:
            out = packed.new_zeros(self.steps * self.batch, packed.shape[-1]).index_copy(0, self.gather, packed)
        else:  # a permutation: every row is written
            out = packed.new_empty(self.steps * self.batch, packed.shape[-1]).index_copy(0, self.gather, packed)
        return out.view(self.steps, self.batch, -1)

    def sort(self, rows: Tensor) -> Tensor:
        """``[B, ...]`` in the user's order -> sorted order."""
        return rows if self.order is None else rows.index_select(0, self.order)

    def unsort(self, rows: Tensor) -> Tensor:
        return rows if self.inverse is None else rows.index_select(0, self.inverse)

    # ---------------------------------------------------------------- inside the Functions
    def previous_rows(self, states: Tensor) -> Tensor:
        """From a ``[B+N, H]`` state buffer, the ``[N, H]`` state before each packed row's step."""
        return states[: self.rows] if self.previous is None else states.index_select(0, self.previous)

    def final_rows(self, states: Tensor) -> Tensor:
        """From a ``[B+N, H]`` state buffer, each sorted sequence's state after its last step ``[B, H]``."""
        if self.last is None:
            return states[-self.batch:]
        return states.index_select(0, self.last + self.batch)

    def step_views(self, packed: Tensor) -> list[Tensor]:
        """Per-step views of a packed ``[N, ...]`` buffer (or ``[B+N, ...]``: first view is the initial state)."""
        sizes = self.batch_sizes if packed.shape[0] == self.rows else [self.batch, *self.batch_sizes]
        return list(packed.split(sizes))

    def rows_of(self, per_sequence: Tensor) -> Tensor:
        """``[B, H]`` per sorted sequence -> ``[N, H]`` per packed row."""
        if self.sequence is None:
            return per_sequence.repeat(len(self.batch_sizes), 1)
        return per_sequence.index_select(0, self.sequence)
