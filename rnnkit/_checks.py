"""Validation at the public boundary: every error names the argument, the value and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def describe(value) -> str:
    """A short description of ``value`` for an error message: a tensor's dtype and shape rather than its
    values, a sequence of tensors by count, anything else by a repr of at most 80 characters."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, Tensor) for v in value):
        return f"a {type(value).__name__} of {len(value)} tensors"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_lengths(lengths, batch: int, steps: int) -> Tensor:
    """Turn ``lengths`` (a sequence or 1-D integer tensor) into a ``[B]`` int64 tensor on the CPU.

    The engines plan from them on the CPU (the fused engine's packing, torch.nn's ``pack_padded_sequence``,
    which wants them there too), so that lengths given on a GPU cost one copy to the host here, and none of
    the engines waits on the GPU for a length again."""
    given = lengths
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"lengths must be a 1-D integer tensor or a list of ints, got {describe(given)}") \
                from error
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got {describe(given)} (dtype {lengths.dtype})")
    lengths = lengths.cpu()
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(
            f"lengths must have shape [B={batch}] (one length per sequence), got shape {list(lengths.shape)}"
        )
    if batch:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1:
            raise ValueError(f"lengths must be >= 1, got min {low}")
        if high > steps:
            raise ValueError(f"lengths must be <= T={steps}, got max {high}")
    return lengths.to(dtype=torch.long)


def torch_build() -> str:
    """This torch's version and what it was built for, for errors about a device it cannot reach: e.g.
    "torch 2.13.0+cpu, a CPU-only build"."""
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return f"torch {torch.__version__}, {built}"
