r"""Fused GRU in both forms: the whole sequence forward, BPTT by hand.

Gate order r, z, n as in torch.nn. With :math:`\tilde h = m \odot h_{t-1}` and :math:`R` the
(layer-normalised) recurrent projection:

- reset after: :math:`a = R(\tilde h) + b_{hh}`, :math:`r, z = \sigma(g_{rz} + a_{rz})`,
  :math:`n = \tanh(g_n + r \odot a_n)`;
- reset before: :math:`r, z = \sigma(g_{rz} + R_{rz}(\tilde h))`, :math:`n = \tanh(g_n + R_n(r \odot \tilde h))`
  (biases inside :math:`g`);

then :math:`h_t = (1 - z) n + z h_{t-1}`, and zoneout mixes :math:`h_t` with :math:`h_{t-1}`.
Forward keeps the activations, the states and (reset after) only the n part of :math:`a` or (reset before)
:math:`r \odot \tilde h`. Backward in the compiled loops: each step recomputes its local derivatives from
those, then one recurrent GEMM (two for reset before), so no all-steps derivative buffers exist (training
memory below torch.nn's). The Python loops precompute every local derivative for all steps at once; each
step then costs a few pointwise ops and the same GEMMs.
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


class FusedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, h0, weight_hh, bias_hh, ln_gain, packing, masks: Masks, reset_after: bool):
        batch, hidden = packing.batch, h0.shape[1]
        rows_total = packing.rows
        act = take_gates(ctx, gates, None if reset_after else bias_hh)  # [N, 3H] pre-activations -> r, z, n
        states = workspace.empty((batch + rows_total, hidden), act)  # [B+N, H]
        states[:batch] = h0
        # h~ before zoneout
        candidate = workspace.empty((rows_total, hidden), act) if masks.zoneout is not None else None
        kernels = compiled.ops() if compiled.usable_for(act) else None
        if reset_after:
            projections = (Projection(weight_hh, ln_gain, packing, hidden),)
            hidden_terms = workspace.empty((rows_total, hidden), act)  # [N, H] the n part of R(h~) + b_hh
        else:
            split = (slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden))
            projections = tuple(Projection(weight_hh[s], None if ln_gain is None else ln_gain[s], packing, hidden)
                                for s in split)
            hidden_terms = workspace.empty((rows_total, hidden), act)  # [N, H] r * h~, input of R_n
        if kernels is not None:
            kernels.gru_forward(act, states, hidden_terms, candidate, *_compiled_buffers(projections),
                                bias_hh if reset_after else None, masks.recurrent,
                                None if masks.zoneout is None else masks.zoneout[0], None, [], None,
                                packing.batch_sizes, reset_after, LAYER_NORM_EPS)
        else:
            _forward_steps(act, states, hidden_terms, candidate, projections, bias_hh if reset_after else None,
                           reset_after, packing, masks)
        ctx.save_for_backward(states, act, hidden_terms)  # not ctx attributes: see take_gates
        ctx.setup = (packing, masks, reset_after, projections, bias_hh is not None, kernels)
        return *state_outputs(states, packing), act

    @staticmethod
    @first_order_only
    def backward(ctx, grad_sequence, grad_final, _):
        states, act, hidden_terms = ctx.saved_tensors
        packing, masks, reset_after, projections, has_bias, kernels = ctx.setup
        for projection in projections:
            projection.begin_backward()
        batch, hidden = packing.batch, states.shape[1]
        r, z, n = act.chunk(3, dim=1)
        h_prev = packing.previous_rows(states)
        h_in = h_prev if masks.recurrent is None else h_prev * masks.recurrent
        grad_in = state_grads(grad_sequence, grad_final, states, packing)  # [B+N, H]
        # [N, 3H] d loss / d pre-activations (input side); the compiled steps may write it over act (see lstm.py)
        grad_gates = act if kernels is not None and compiled.may_reuse_saved() else workspace.empty_like(act)
        zone = None if masks.zoneout is None else masks.zoneout[0]
        if kernels is not None and not reset_after:  # the compiled steps recompute their local derivatives
            kernels.gru_backward_before(grad_in, act, states, grad_gates, *_compiled_buffers(projections, True),
                                        masks.recurrent, zone, packing.batch_sizes, LAYER_NORM_EPS)
            return _reset_before_grads(grad_gates, grad_in, h_in, hidden_terms, projections, has_bias, batch, hidden)
        if kernels is not None:  # reset after, likewise
            grad_n = workspace.empty_like(hidden_terms)
            kernels.gru_backward_after(grad_in, act, states, hidden_terms, grad_gates, grad_n,
                                       projections[0].compiled_buffers(backward=True), masks.recurrent, zone,
                                       packing.batch_sizes, LAYER_NORM_EPS)
            grad_weight, grad_gain = projections[0].parameter_grads(grad_gates, h_in)
            grad_bias = grad_gates.sum(0) if has_bias else None
            grad_gates[:, 2 * hidden:] = grad_n  # input side: r and z as the hidden side, n without the r factor
            return grad_gates, grad_in[:batch], grad_weight, grad_bias, grad_gain, None, None, None
        # local derivatives of h_t w.r.t. each pre-activation, per unit of dL/dh_t, built in place:
        # coef[:, 0] r (reset after) or d r/d a_r (reset before), coef[:, 1] z, coef[:, 2] n   [N, 3, H]
        coef = workspace.empty((act.shape[0], 3, hidden), act)
        c_r, c_z, c_n = coef.unbind(1)
        torch.mul(n, n, out=c_n).neg_().add_(1.0).addcmul_(c_n, z, value=-1.0)  # (1 - n^2)(1 - z)
        torch.sub(h_prev, n, out=c_z).mul_(z).addcmul_(c_z, z, value=-1.0)  # (h - n) z (1 - z)
        direct = workspace.copy_of(z)  # dh_t / dh_{t-1} along the direct path: z, or with zoneout m + (1 - m) z
        if zone is not None:
            c_n.addcmul_(c_n, zone, value=-1.0)
            c_z.addcmul_(c_z, zone, value=-1.0)
            direct.add_(zone).addcmul_(zone, z, value=-1.0)
        if not reset_after:  # the Python loops, reset before
            torch.mul(h_in, r, out=c_r).addcmul_(c_r, r, value=-1.0)  # h~ r (1 - r)
            r_in = r if masks.recurrent is None else r * masks.recurrent  # d(r*h~)/dh_{t-1}
            _backward_steps_reset_before(grad_in, grad_gates, coef, direct, r_in, projections, packing, masks)
            return _reset_before_grads(grad_gates, grad_in, h_in, hidden_terms, projections, has_bias, batch, hidden)
        # the Python loops, reset after
        torch.mul(c_n, hidden_terms, out=c_r).mul_(r).addcmul_(c_r, r, value=-1.0)
        input_n = workspace.copy_of(c_n)  # d h_t / d (input term of n), per unit dL/dh_t
        c_n.mul_(r)  # coef now holds d h_t / d (R(h~) + b_hh); grad_gates receives d loss / d (R(h~) + b_hh)
        _backward_steps_reset_after(grad_in, grad_gates, coef, direct, projections[0], packing, masks)
        grad_weight, grad_gain = projections[0].parameter_grads(grad_gates, h_in)
        grad_bias = grad_gates.sum(0) if has_bias else None
        # input side: equal to the hidden side for r and z; for n it is dL/dh_t * input_n, all steps at once
        torch.mul(grad_in[batch:], input_n, out=grad_gates[:, 2 * hidden:])
        return grad_gates, grad_in[:batch], grad_weight, grad_bias, grad_gain, None, None, None


def _reset_before_grads(grad_gates, grad_in, h_in, hidden_terms, projections, has_bias, batch, hidden):
    """The reset-before backward's return value once its loop filled ``grad_gates`` and ``grad_in``."""
    w_rz, gain_rz = projections[0].parameter_grads(grad_gates[:, : 2 * hidden], h_in)
    w_n, gain_n = projections[1].parameter_grads(grad_gates[:, 2 * hidden:], hidden_terms)
    grad_weight = torch.cat((w_rz, w_n))
    grad_gain = None if gain_rz is None else torch.cat((gain_rz, gain_n))
    grad_bias = grad_gates.sum(0) if has_bias else None
    return grad_gates, grad_in[:batch], grad_weight, grad_bias, grad_gain, None, None, None


def infer(cell, x, h0, packing, masks: Masks, kernels) -> Callable[[], tuple[Tensor, Tensor]]:
    """:class:`FusedGRU`'s forward where autograd records nothing, each step projecting its inputs in the compiled
    loop (as :func:`rnnkit.engine.fused.lstm.infer`): the gates in a ``[B, 3H]`` scratch. Starts the loop and
    returns what gives every step's ``h [N, H]`` (a view) and the final ``h`` once it is done."""
    batch, hidden, rows_total = packing.batch, cell.hidden_size, packing.rows
    states = workspace.empty((batch + rows_total, hidden), x)
    states[:batch] = h0
    candidate = workspace.empty((rows_total, hidden), x) if masks.zoneout is not None else None
    terms = workspace.empty((rows_total, hidden), x)
    norm, parameters = cell.layer_norm, cell._parameters  # (from the cell's dict, as lstm.infer reads them)
    inputs = Projection(parameters["weight_ih"], parameters["ln_ih_weight"] if norm else None, packing, hidden,
                        per_step=True)
    gain, weight_hh = parameters["ln_hh_weight"] if norm else None, parameters["weight_hh"]
    if cell.reset_after:  # b_hh inside the reset's product, b_ih with the inputs
        projections = (Projection(weight_hh, gain, packing, hidden, per_step=True),)
        input_bias, bias_hh = parameters["bias_ih"], parameters["bias_hh"]
    else:
        projections = tuple(Projection(weight_hh[s], None if gain is None else gain[s], packing, hidden,
                                       per_step=True) for s in (slice(0, 2 * hidden), slice(2 * hidden, None)))
        input_bias, bias_hh = combined_bias(parameters["bias_ih"], parameters["bias_hh"]), None
    kernels.gru_forward(x.new_empty(batch, 3 * hidden), states, terms, candidate, *_compiled_buffers(projections),
                        bias_hh, masks.recurrent, None if masks.zoneout is None else masks.zoneout[0], x.contiguous(),
                        inputs.compiled_buffers(), input_bias, packing.batch_sizes, cell.reset_after, LAYER_NORM_EPS)
    return lambda: state_outputs(states, packing)


def _compiled_buffers(projections, backward: bool = False) -> tuple[list, int]:
    """The compiled loops' projection tensors, all projections in one list, and where the second starts."""
    lists = [p.compiled_buffers(backward) for p in projections]
    return [b for buffers in lists for b in buffers], len(lists[0])


def _forward_steps(act, states, hidden_terms, candidate, projections, bias, reset_after, packing, masks) -> None:
    """The forward loop in Python (what csrc/loops.cpp's gru_forward does)."""
    hidden, views = states.shape[1], packing.step_views
    state_views = views(states)
    rz_views, r_views = views(act[:, : 2 * hidden]), views(act[:, :hidden])
    z_views, n_views = views(act[:, hidden: 2 * hidden]), views(act[:, 2 * hidden:])
    recurrent = masks.recurrent_views(packing)
    zoneout = None if masks.zoneout is None else views(masks.zoneout[0])
    candidate_views = views(candidate) if candidate is not None else None
    term_views = views(hidden_terms)
    if reset_after:  # each step's R(h~) + b_hh in a scratch buffer; its n part is kept in hidden_terms
        scratch = act.new_empty(packing.batch, 3 * hidden)
    for t, rows in enumerate(packing.batch_sizes):
        h_prev = step_rows(state_views, t, rows)
        h_in = h_prev if recurrent[t] is None else h_prev * recurrent[t]
        if reset_after:
            step = scratch[:rows]
            if bias is None:
                step.zero_()
            else:
                step.copy_(bias.expand_as(step))
            projections[0].add_into(step, h_in, t)
            rz_views[t].add_(step[:, : 2 * hidden]).sigmoid_()
            term_views[t].copy_(step[:, 2 * hidden:])
            tanh_(n_views[t].addcmul_(r_views[t], term_views[t]))
        else:
            projections[0].add_into(rz_views[t], h_in, t)
            rz_views[t].sigmoid_()
            projections[1].add_into(n_views[t], torch.mul(r_views[t], h_in, out=term_views[t]), t)
            tanh_(n_views[t])
        if zoneout is None:
            torch.lerp(n_views[t], h_prev, z_views[t], out=state_views[t + 1])
        else:
            torch.lerp(n_views[t], h_prev, z_views[t], out=candidate_views[t])
            torch.lerp(candidate_views[t], h_prev, zoneout[t], out=state_views[t + 1])


def _backward_steps_reset_after(grad_in, grad_hidden, coef, direct, projection, packing, masks) -> None:
    """The reset-after backward loop in Python (csrc/loops.cpp's gru_backward_after, which
    recomputes the derivatives this one reads from ``coef``): fills ``grad_in`` and
    ``grad_hidden`` [N, 3H] = d loss / d (R(h~) + b_hh)."""
    views = packing.step_views
    grad_views, direct_views, coef_views = views(grad_in), views(direct), views(coef)
    grad_hidden_views = views(grad_hidden.view(-1, 3, grad_in.shape[1]))
    recurrent = masks.recurrent_views(packing)
    for t in range(len(packing.batch_sizes) - 1, -1, -1):
        grad_h = grad_views[t + 1]
        grad_step = torch.mul(grad_h.unsqueeze(1), coef_views[t], out=grad_hidden_views[t])
        grad_prev = step_rows(grad_views, t, grad_h.shape[0])
        projection.grad_into(grad_prev, grad_step.view(grad_h.shape[0], -1), t, recurrent[t])
        grad_prev.addcmul_(grad_h, direct_views[t])


def _backward_steps_reset_before(grad_in, grad_gates, coef, direct, r_in, projections, packing, masks) -> None:
    """The reset-before backward loop in Python (csrc/loops.cpp's gru_backward_before, which recomputes the
    derivatives this one reads from ``coef``): fills ``grad_in`` and the pre-activation gradients
    ``grad_gates`` [N, 3H]."""
    hidden, views = grad_in.shape[1], packing.step_views
    grad_views, direct_views, r_in_views = views(grad_in), views(direct), views(r_in)
    zn_views, cr_views = views(coef[:, 1:]), views(coef[:, 0])
    g_zn_views = views(grad_gates[:, hidden:].unflatten(1, (2, hidden)))
    g_n_views, g_r_views = views(grad_gates[:, 2 * hidden:]), views(grad_gates[:, :hidden])
    g_rz_views = views(grad_gates[:, : 2 * hidden])
    recurrent = masks.recurrent_views(packing)
    for t in range(len(packing.batch_sizes) - 1, -1, -1):
        grad_h = grad_views[t + 1]
        torch.mul(grad_h.unsqueeze(1), zn_views[t], out=g_zn_views[t])
        grad_rh = projections[1].grad_inputs(g_n_views[t], t)  # d loss / d (r * h~)
        torch.mul(grad_rh, cr_views[t], out=g_r_views[t])
        grad_prev = step_rows(grad_views, t, grad_h.shape[0])
        grad_prev.addcmul_(grad_rh, r_in_views[t]).addcmul_(grad_h, direct_views[t])
        projections[0].grad_into(grad_prev, g_rz_views[t], t, recurrent[t])
