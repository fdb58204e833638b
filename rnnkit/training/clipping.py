r"""Gradient clipping, exactly as the equations say.

- by norm (Pascanu et al. 2013): if :math:`\lVert g\rVert > c` then :math:`g \leftarrow c\,g/\lVert g\rVert`,
  with :math:`\lVert g\rVert` the norm of all gradients together (torch's ``clip_grad_norm_`` divides by
  :math:`\lVert g\rVert + 10^{-6}`, so its result is slightly below ``c``; this one is ``c``);
- by value: every component clamped to :math:`[-c, c]`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def _grads(parameters: Iterable[Tensor]) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def _check_threshold(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def gradient_norm(parameters: Iterable[Tensor]) -> float:
    """The 2-norm of all gradients of ``parameters`` taken together (0.0 if none has a gradient)."""
    grads = _grads(parameters)
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads])).item()


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> float:
    """Rescale gradients in place to norm ``max_norm`` when their norm exceeds it; return the norm before."""
    max_norm = _check_threshold("max_norm", max_norm)
    parameters = list(parameters) if not isinstance(parameters, Tensor) else [parameters]
    total = gradient_norm(parameters)
    if total > max_norm:
        with torch.no_grad():
            for grad in _grads(parameters):
                grad.mul_(max_norm / total)
    return total


def clip_grad_value(parameters: Iterable[Tensor], clip_value: float) -> float:
    """Clamp every gradient component to ``[-clip_value, clip_value]`` in place; return the norm before."""
    clip_value = _check_threshold("clip_value", clip_value)
    parameters = list(parameters) if not isinstance(parameters, Tensor) else [parameters]
    total = gradient_norm(parameters)
    with torch.no_grad():
        for grad in _grads(parameters):
            grad.clamp_(-clip_value, clip_value)
    return total
