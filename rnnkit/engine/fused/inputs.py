r"""The input side of a fused layer: every step's input projection at once, into a pooled buffer.

.. math::
    G = X W_{ih}^T + b_{ih}\qquad\text{or, with layer norm,}\qquad G = \mathrm{LN}_{gate}(X W_{ih}^T)\,\gamma + b_{ih}

for all ``N`` packed rows ``X [N, I]``: what :meth:`rnnkit.cells.base.RecurrentCell.input_gates` computes
with autograd, here with the ``[N, G*H]`` buffers taken from :mod:`~rnnkit.engine.fused.workspace` (no
fresh page faults), the layer norm and its backward done by the compiled loops in one pass over the rows
(split over torch's threads), and the gain's gradient summed in that same pass. Used when the compiled loops
are; the tests hold it equal to the autograd version (the Python-loops path).

A time-major ``[T, B, I]`` input that is no ``[N, I]`` view (a batch-first layer's input, transposed) is
copied into a pooled buffer here rather than by a reshape into a fresh one, and its gradient is written in the
input's own layout by one batched product per sequence, ``dX_b = dG_b W``, so that autograd hands it on as it
is instead of copying it into that layout. Training, in-process A/B against reshaping and copying (all four
benchmark shapes with B > 1): the LSTM and GRU 1-3.5% less time, the Elman RNN 0-3.5%.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import LAYER_NORM_EPS
from rnnkit.engine.fused import compiled, workspace
from rnnkit.engine.fused.common import first_order_only, run_function
from rnnkit.engine.fused.gemm import project, through_onednn, times_weight, weight_grad, weight_grad_and_sum


class InputProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gain, hidden: int, kernels, saves: bool):
        ctx.layout = None
        if x.dim() == 3:  # [T, B, I], no [N, I] view: a pooled copy; the gradient goes back in x's layout
            steps, batch = x.shape[0], x.shape[1]
            ctx.layout = (steps, batch, x.transpose(0, 1).is_contiguous())
            flat = workspace.empty((steps * batch, x.shape[2]), x)
            flat.view(x.shape).copy_(x)
            x = flat
        rows, width = x.shape[0], weight.shape[0]
        if gain is None:
            gates = project(x, weight, bias)
            ctx.save_for_backward(x, weight)
        else:  # gates = LN(pre) gain + bias; in inference over pre itself (no backward reads it)
            pre = project(x, weight, None)
            gates = workspace.empty((rows, width), x) if saves else pre
            mean, rstd = x.new_empty(rows, width // hidden), x.new_empty(rows, width // hidden)
            kernels.layer_norm_gates(pre, gain, bias, gates, mean, rstd, hidden, LAYER_NORM_EPS)
            ctx.save_for_backward(x, weight, gain, pre, mean, rstd)
        ctx.setup = (bias is not None, gain is not None, hidden, kernels)
        return gates

    @staticmethod
    @first_order_only
    def backward(ctx, grad):
        has_bias, has_gain, hidden, kernels = ctx.setup
        x, weight, *norm = ctx.saved_tensors
        grad = grad.contiguous()
        needs = ctx.needs_input_grad
        wants_bias = has_bias and needs[2]
        grad_gain = grad_bias = None
        if has_gain:  # the bias's gradient (the sum of grad over the rows) comes from the norm's backward pass
            gain, pre, mean, rstd = norm
            # grad_pre over pre when the graph is freed after this backward (the pass reads a row before writing it)
            grad_pre = pre if compiled.may_reuse_saved() else workspace.empty_like(pre)
            grad_gain = torch.zeros_like(gain, dtype=torch.float64)
            grad_bias = torch.zeros_like(grad_gain) if wants_bias else None
            kernels.layer_norm_gates_backward(grad, pre, gain, mean, rstd, grad_pre, grad_gain, grad_bias, hidden)
            grad_gain = grad_gain.to(gain.dtype)
            grad_bias = grad_bias.to(gain.dtype) if wants_bias else None
        else:
            grad_pre = grad
        grad_x = None
        if needs[0]:
            grad_x = times_weight(grad_pre, weight) if ctx.layout is None else _in_layout(grad_pre, weight, *ctx.layout)
        grad_weight = None
        if needs[1] and wants_bias and not has_gain:  # the weight's product gives the bias's gradient too
            grad_weight, grad_bias = weight_grad_and_sum(grad_pre, x)
        elif needs[1]:
            grad_weight = weight_grad(grad_pre, x)
        if wants_bias and grad_bias is None:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias, grad_gain, None, None, None


def _in_layout(grad: Tensor, weight: Tensor, steps: int, batch: int, batch_first: bool) -> Tensor:
    """``grad [N, G] @ weight [G, I]`` as a ``[T, B, I]`` tensor, laid out batch-first when the input was."""
    if batch_first and not through_onednn(grad, grad.shape[0] * grad.shape[1] * weight.shape[1]):
        out = grad.new_empty(batch, steps, weight.shape[1])
        torch.bmm(grad.view(steps, batch, -1).transpose(0, 1), weight.expand(batch, *weight.shape), out=out)
        return out.transpose(0, 1)
    return times_weight(grad, weight).view(steps, batch, -1)


def combined_bias(bias: Tensor | None, other: Tensor | None) -> Tensor | None:
    """``bias + other`` (with autograd), or whichever is not None."""
    return other if bias is None else bias if other is None else bias + other


def input_gates(cell, x: Tensor, recurrent_bias: Tensor | None = None, saves: bool = True) -> tuple[Tensor, bool]:
    """``cell.input_gates(x)`` for packed rows ``x [N, I]`` (or ``[T, B, I]`` time-major, no lengths), and
    whether ``recurrent_bias`` is added in too.

    Through :class:`InputProjection` when the compiled loops run, else with autograd. A ``recurrent_bias``
    (``b_hh`` of a cell whose recurrence adds it straight to the gates) is added to ``b_ih`` first, so that
    the projection's GEMM or layer-norm pass adds both, and its backward sums the gates' gradient over all
    rows once for both biases (autograd hands the sum to each): no separate pass to add ``b_hh`` and no
    second ``[N, G*H]`` sum in the recurrent Function. Both paths do it, so that they do the same arithmetic.
    """
    gain = cell.ln_ih_weight if cell.layer_norm else None
    bias, folded = cell.bias_ih, False
    if recurrent_bias is not None and bias is not None:
        bias, folded = bias + recurrent_bias, True
    kernels = compiled.ops() if compiled.usable_for(x) else None
    if kernels is None:
        return cell.project(x.reshape(-1, x.shape[-1]), cell.weight_ih, bias, gain), folded
    return run_function(InputProjection, saves, x, cell.weight_ih, bias, gain, cell.hidden_size, kernels, saves), folded
