r"""Fused Elman RNN: the whole sequence forward, BPTT by hand.

Forward, step ``t`` (rows ``[0, n_t)``): :math:`\tilde h_t = f(g_t + R(m \odot h_{t-1}))` with
:math:`g_t` the input term plus both biases and :math:`R` the (layer-normalised) recurrent projection;
zoneout: :math:`h_t = z_t h_{t-1} + (1 - z_t)\tilde h_t`.
Backward: :math:`\delta_t = \partial L/\partial h_t \odot f'(\cdot) (1 - z_t)`, with :math:`f'` recomputed from
the activations in each compiled step (precomputed for all steps in the Python loops);
:math:`\partial L/\partial h_{t-1} \mathrel{+}= m \odot R^\top\delta_t + z_t \odot \partial L/\partial h_t`;
weight gradients as one GEMM over all steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.cells.base import LAYER_NORM_EPS
from rnnkit.engine.fused import compiled, workspace
from rnnkit.engine.fused.common import (
    Masks,
    Projection,
    first_order_only,
    state_grads,
    state_outputs,
    step_rows,
    take_gates,
    tanh_,
)
from rnnkit.engine.fused.inputs import combined_bias


def _relu(x, out):
    return torch.clamp_min(x, 0.0, out=out)


class FusedSimpleRNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, h0, weight_hh, bias_hh, ln_gain, packing, masks: Masks, relu: bool):
        batch, hidden = packing.batch, h0.shape[1]
        pre = take_gates(ctx, gates, bias_hh)  # [N, H] pre-activations, then activations
        states = workspace.empty((batch + packing.rows, hidden), pre)  # [B+N, H]: h_0, then h_t of every row
        states[:batch] = h0
        zoneout = None if masks.zoneout is None else masks.zoneout[0]
        kernels = compiled.ops() if compiled.usable_for(pre) else None
        projection = Projection(weight_hh, ln_gain, packing, hidden)  # (unrecorded compiled forwards: infer)
        if kernels is not None:
            kernels.simple_forward(pre, states, projection.compiled_buffers(), masks.recurrent, zoneout, None, [],
                                   None, packing.batch_sizes, relu, LAYER_NORM_EPS)
        else:
            _forward_steps(pre, states, projection, relu, packing, masks)
        ctx.save_for_backward(states, pre if zoneout is not None else None)  # see take_gates
        ctx.setup = (packing, masks, relu, projection, bias_hh is not None, kernels)
        return *state_outputs(states, packing), pre

    @staticmethod
    @first_order_only
    def backward(ctx, grad_sequence, grad_final, _):
        states, activations = ctx.saved_tensors
        packing, masks, relu, projection, has_bias, kernels = ctx.setup
        projection.begin_backward()
        batch = packing.batch
        # [B+N, H]: dL/dh; h_0's gradient in the first block
        grad_in = state_grads(grad_sequence, grad_final, states, packing)
        if activations is not None and kernels is not None and compiled.may_reuse_saved():
            grad_pre = activations  # [N, H], over the activations (with zoneout their own buffer; see lstm.py)
        else:
            activations = activations if activations is not None else states[batch:]  # (the outputs: never)
            grad_pre = workspace.empty_like(activations)
        if kernels is not None:  # each compiled step recomputes f' from the activations
            kernels.simple_backward(grad_in, activations, grad_pre, projection.compiled_buffers(backward=True),
                                    masks.recurrent, None if masks.zoneout is None else masks.zoneout[0],
                                    packing.batch_sizes, relu, LAYER_NORM_EPS)
        else:  # the Python loops: f' (1 - zoneout) for all steps at once  [N, H]
            coef = workspace.empty_like(activations)
            if relu:
                torch.sign(activations, out=coef)
            else:
                torch.mul(activations, activations, out=coef).neg_().add_(1.0)
            if masks.zoneout is not None:
                coef.addcmul_(coef, masks.zoneout[0], value=-1.0)
            _backward_steps(grad_in, grad_pre, coef, projection, packing, masks)
        inputs = packing.previous_rows(states)
        if masks.recurrent is not None:
            inputs = inputs * masks.recurrent
        grad_weight, grad_gain = projection.parameter_grads(grad_pre, inputs)
        grad_bias = grad_pre.sum(0) if has_bias else None
        return grad_pre, grad_in[:batch], grad_weight, grad_bias, grad_gain, None, None, None


def infer(cell, x, h0, packing, masks: Masks, kernels) -> Callable[[], tuple[Tensor, Tensor]]:
    """:class:`FusedSimpleRNN`'s forward where autograd records nothing, each step projecting its inputs in the
    compiled loop (as :func:`rnnkit.engine.fused.lstm.infer`): the pre-activations in a ``[B, H]`` scratch instead of
    an ``[N, H]`` buffer from one GEMM up front, and no Function. Returns what gives every step's ``h [N, H]`` (a view)
    and the final ``h``."""
    batch, hidden = packing.batch, cell.hidden_size
    states = workspace.empty((batch + packing.rows, hidden), x)
    states[:batch] = h0
    norm, parameters = cell.layer_norm, cell._parameters  # (from the cell's dict, as lstm.infer reads them)
    inputs = Projection(parameters["weight_ih"], parameters["ln_ih_weight"] if norm else None, packing, hidden,
                        per_step=True)
    recurrent = Projection(parameters["weight_hh"], parameters["ln_hh_weight"] if norm else None, packing, hidden,
                           per_step=True)
    kernels.simple_forward(x.new_empty(batch, hidden), states, recurrent.compiled_buffers(), masks.recurrent,
                           None if masks.zoneout is None else masks.zoneout[0], x.contiguous(),
                           inputs.compiled_buffers(), combined_bias(parameters["bias_ih"], parameters["bias_hh"]),
                           packing.batch_sizes, cell.nonlinearity == "relu", LAYER_NORM_EPS)
    return lambda: state_outputs(states, packing)


def _forward_steps(pre, states, projection, relu, packing, masks) -> None:
    """The forward loop in Python (what csrc/loops.cpp's simple_forward does)."""
    state_views, pre_views = packing.step_views(states), packing.step_views(pre)
    recurrent = masks.recurrent_views(packing)
    zoneout = None if masks.zoneout is None else packing.step_views(masks.zoneout[0])
    activate = _relu if relu else tanh_
    for t, rows in enumerate(packing.batch_sizes):
        h_prev = step_rows(state_views, t, rows)
        projection.add_into(pre_views[t], h_prev if recurrent[t] is None else h_prev * recurrent[t], t)
        if zoneout is None:
            activate(pre_views[t], out=state_views[t + 1])
        else:
            activate(pre_views[t], out=pre_views[t])
            torch.lerp(pre_views[t], h_prev, zoneout[t], out=state_views[t + 1])


def _backward_steps(grad_in, grad_pre, coef, projection, packing, masks) -> None:
    """The backward loop in Python (csrc/loops.cpp's simple_backward, which recomputes the ``coef`` this one
    reads)."""
    grad_views, grad_pre_views = packing.step_views(grad_in), packing.step_views(grad_pre)
    coef_views = packing.step_views(coef)
    recurrent = masks.recurrent_views(packing)
    zoneout = None if masks.zoneout is None else packing.step_views(masks.zoneout[0])
    for t in range(len(packing.batch_sizes) - 1, -1, -1):
        grad_h = grad_views[t + 1]
        delta = torch.mul(grad_h, coef_views[t], out=grad_pre_views[t])
        grad_prev = step_rows(grad_views, t, grad_h.shape[0])
        projection.grad_into(grad_prev, delta, t, recurrent[t])
        if zoneout is not None:
            grad_prev.addcmul_(grad_h, zoneout[t])
