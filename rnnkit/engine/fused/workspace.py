"""The fused engine's large CPU buffers, kept between calls.

torch's CPU allocator does not cache, and glibc hands blocks above its mmap threshold (at most 32 MB)
back to the operating system when they are freed, so every fresh multi-megabyte tensor is page-faulted
in again on first write: about 0.2-0.7 ms per MB on the development machine, a sixth to a third of a
GRU training step at (B, T, H) = (64, 200, 256) (measurements in benchmarks/RESULTS.md).

The fused Functions take their big buffers (states, gate activations, local derivatives, gradients) from
this pool instead. A buffer's memory is handed out again only when no tensor uses it any more (its
storage's reference count says so), so reuse can never be seen: a result the caller keeps, or a graph
waiting for its backward, keeps its memory out of the pool. The pool keeps at most
``RNNKIT_WORKSPACE_MB`` MiB (default 1024) of CPU memory; :func:`release` frees what is not in use;
``RNNKIT_WORKSPACE_MB=0`` turns it off (every buffer is a fresh ``torch.empty``).
"""

from __future__ import annotations

import math
import os
import threading

import torch
from torch import Tensor

#: buffers smaller than this come from torch.empty (glibc serves them from its heap without new faults)
MIN_BYTES = 1 << 20

_lock = threading.Lock()
_storages: list[torch.UntypedStorage] = []


def limit_bytes() -> int:
    """The most memory the pool keeps, from ``RNNKIT_WORKSPACE_MB`` (default 1024 MiB)."""
    raw = os.environ.get("RNNKIT_WORKSPACE_MB", "1024")
    try:
        megabytes = float(raw)
    except ValueError:
        raise ValueError(f"RNNKIT_WORKSPACE_MB must be a number of MiB (0 turns the pool off), got {raw!r}") from None
    return max(0, int(megabytes * (1 << 20)))


#: how many references a storage has; a private torch function, so the pool turns itself off without it
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _unused(storage: torch.UntypedStorage) -> bool:
    return _use_count(storage._cdata) == 1  # only the pool's own reference


def empty(shape: tuple[int, ...] | list[int], like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device, whose memory may
    come from an earlier call that no longer uses it."""
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * like.element_size()
    if nbytes < MIN_BYTES or like.device.type != "cpu" or _use_count is None:  # before reading the environment
        return like.new_empty(shape)  # (1.8 us against 4.4 for torch.empty(shape, dtype=, device=) at T=1)
    limit = limit_bytes()
    if nbytes > limit:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    with _lock:
        best = None
        for storage in _storages:  # the smallest free buffer that fits without wasting more than half
            size = storage.nbytes()
            if nbytes <= size <= 2 * nbytes and (best is None or size < best.nbytes()) and _unused(storage):
                best = storage
        if best is None:
            _trim(limit - nbytes)
            if sum(s.nbytes() for s in _storages) + nbytes > limit:  # the rest is in use: do not keep this one
                return torch.empty(shape, dtype=like.dtype, device=like.device)
            best = torch.UntypedStorage(nbytes, device=like.device)
            _storages.append(best)
        return torch.empty(0, dtype=like.dtype, device=like.device).set_(best, 0, shape)


def empty_like(tensor: Tensor) -> Tensor:
    return empty(tensor.shape, tensor)


def copy_of(tensor: Tensor) -> Tensor:
    """A contiguous copy of ``tensor`` (what ``clone`` gives) in a pooled buffer."""
    return empty(tensor.shape, tensor).copy_(tensor)


def _trim(keep: int) -> None:
    """Drop unused buffers, oldest first, until the pool holds at most ``keep`` bytes."""
    total = sum(s.nbytes() for s in _storages)
    for storage in list(_storages):
        if total <= keep:
            return
        if _unused(storage):
            _storages.remove(storage)
            total -= storage.nbytes()


def release() -> int:
    """Free every pooled buffer no tensor uses; returns the bytes released."""
    with _lock:
        before = sum(s.nbytes() for s in _storages)
        _trim(0)
        return before - sum(s.nbytes() for s in _storages)


def pooled_bytes() -> int:
    """Bytes the pool holds now (in use or free)."""
    with _lock:
        return sum(s.nbytes() for s in _storages)
