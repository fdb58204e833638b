r"""Fused GRU in both forms: the whole sequence forward, BPTT by hand.

Gate order r, z, n as in torch.nn. With :math:`\tilde h = m \odot h_{t-1}` and :math:`R` the
(layer-normalised) recurrent projection:

- reset after: :math:`a = R(\tilde h) + b_{hh}`, :math:`r, z = \sigma(g_{rz} + a_{rz})`,
  :math:`n = \tanh(g_n + r \odot a_n)`;
- reset before: :math:`r, z = \sigma(g_{rz} + R_{rz}(\tilde h))`, :math:`n = \tanh(g_n + R_n(r \odot \tilde h))`
  (biases inside :math:`g`);

then :math:`h_t = (1 - z) n + z h_{t-1}`, and zoneout mixes :math:`h_t` with :math:`h_{t-1}`.
Backward precomputes every local derivative for all steps at once; each step then costs a few
pointwise ops and one recurrent GEMM (two for reset-before).
"""

from __future__ import annotations

import torch

from rnnkit.cells.base import LAYER_NORM_EPS
from rnnkit.engine.fused import compiled
from rnnkit.engine.fused.common import Masks, Projection, first_order_only, or_zeros, step_rows, take_gates, tanh_


class FusedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, h0, weight_hh, bias_hh, ln_gain, packing, masks: Masks, reset_after: bool):
        batch, hidden = packing.batch, h0.shape[1]
        rows_total = packing.rows
        act = take_gates(ctx, gates, None if reset_after else bias_hh)  # [N, 3H] pre-activations -> r, z, n
        states = act.new_empty(batch + rows_total, hidden)  # [B+N, H]
        states[:batch] = h0
        views = packing.step_views
        state_views = views(states)
        rz_views, r_views = views(act[:, : 2 * hidden]), views(act[:, :hidden])
        z_views, n_views = views(act[:, hidden: 2 * hidden]), views(act[:, 2 * hidden:])
        recurrent = masks.recurrent_views(packing)
        zoneout = None if masks.zoneout is None else views(masks.zoneout[0])
        candidate = act.new_empty(rows_total, hidden) if zoneout is not None else None  # h~ before zoneout
        candidate_views = views(candidate) if candidate is not None else None
        if reset_after:
            projections = (Projection(weight_hh, ln_gain, packing, hidden),)
            hidden_terms = act.new_empty(rows_total, 3 * hidden)  # [N, 3H] R(h~) + b_hh
            if bias_hh is None:
                hidden_terms.zero_()
            else:
                hidden_terms.copy_(bias_hh.expand_as(hidden_terms))
            term_views = views(hidden_terms)
            term_rz_views, term_n_views = views(hidden_terms[:, : 2 * hidden]), views(hidden_terms[:, 2 * hidden:])
        else:
            split = (slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden))
            projections = tuple(Projection(weight_hh[s], None if ln_gain is None else ln_gain[s], packing, hidden)
                                for s in split)
            hidden_terms = act.new_empty(rows_total, hidden)  # [N, H] r * h~, input of R_n
            term_views = views(hidden_terms)
        kernels = compiled.ops() if compiled.usable_for(act) else None
        if kernels is not None:
            buffers = [b for p in projections for b in p.compiled_buffers()]
            kernels.gru_forward(act, states, hidden_terms, candidate, buffers, len(projections[0].compiled_buffers()),
                                masks.recurrent, None if masks.zoneout is None else masks.zoneout[0],
                                packing.batch_sizes, reset_after, LAYER_NORM_EPS)
        for t, rows in enumerate(packing.batch_sizes if kernels is None else ()):
            h_prev = step_rows(state_views, t, rows)
            h_in = h_prev if recurrent[t] is None else h_prev * recurrent[t]
            if reset_after:
                projections[0].add_into(term_views[t], h_in, t)
                rz_views[t].add_(term_rz_views[t]).sigmoid_()
                tanh_(n_views[t].addcmul_(r_views[t], term_n_views[t]))
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
        ctx.save_for_backward(states)
        ctx.buffers = (act, hidden_terms)
        ctx.setup = (packing, masks, reset_after, projections, bias_hh is not None, kernels)
        return states, act

    @staticmethod
    @first_order_only
    def backward(ctx, grad_states, _):
        (states,) = ctx.saved_tensors
        act, hidden_terms = ctx.buffers
        packing, masks, reset_after, projections, has_bias, kernels = ctx.setup
        for projection in projections:
            projection.begin_backward()
        batch, hidden = packing.batch, states.shape[1]
        views = packing.step_views
        r, z, n = act.chunk(3, dim=1)
        h_prev = packing.previous_rows(states)
        h_in = h_prev if masks.recurrent is None else h_prev * masks.recurrent
        # local derivatives of h_t w.r.t. each pre-activation, per unit of dL/dh_t, built in place:
        # coef[:, 0] r (reset after) or d r/d a_r (reset before), coef[:, 1] z, coef[:, 2] n   [N, 3, H]
        coef = act.new_empty(act.shape[0], 3, hidden)
        c_r, c_z, c_n = coef.unbind(1)
        torch.mul(n, n, out=c_n).neg_().add_(1.0).addcmul_(c_n, z, value=-1.0)  # (1 - n^2)(1 - z)
        torch.sub(h_prev, n, out=c_z).mul_(z).addcmul_(c_z, z, value=-1.0)  # (h - n) z (1 - z)
        direct = z.clone()  # dh_t / dh_{t-1} along the direct path: z, or with zoneout m + (1 - m) z
        if masks.zoneout is not None:
            zone = masks.zoneout[0]
            c_n.addcmul_(c_n, zone, value=-1.0)
            c_z.addcmul_(c_z, zone, value=-1.0)
            direct.add_(zone).addcmul_(zone, z, value=-1.0)
        grad_in = or_zeros(grad_states, states).clone(memory_format=torch.contiguous_format)  # [B+N, H]
        grad_views, direct_views = views(grad_in), views(direct)
        grad_gates = torch.empty_like(act)  # [N, 3H] d loss / d pre-activations (input side)
        recurrent = masks.recurrent_views(packing)
        steps = range(len(packing.batch_sizes) - 1, -1, -1) if kernels is None else ()
        if kernels is not None:
            buffers = [b for p in projections for b in p.compiled_buffers(backward=True)]
            split = 6 if projections[0].gain is not None else 1
        if reset_after:
            torch.mul(c_n, hidden_terms[:, 2 * hidden:], out=c_r).mul_(r).addcmul_(c_r, r, value=-1.0)
            input_n = c_n.clone()  # d h_t / d (input term of n), per unit dL/dh_t
            c_n.mul_(r)  # coef now holds d h_t / d (R(h~) + b_hh)
            grad_hidden = grad_gates.view(-1, 3, hidden)  # [N, 3, H] d loss / d (R(h~) + b_hh), for now
            coef_views, grad_hidden_views = views(coef), views(grad_hidden)
            if kernels is not None:
                kernels.gru_backward(grad_in, coef, direct, grad_gates, buffers, split, None, masks.recurrent,
                                     packing.batch_sizes, True, LAYER_NORM_EPS)
            for t in steps:
                grad_h = grad_views[t + 1]
                grad_step = torch.mul(grad_h.unsqueeze(1), coef_views[t], out=grad_hidden_views[t])
                grad_prev = step_rows(grad_views, t, grad_h.shape[0])
                projections[0].grad_into(grad_prev, grad_step.view(grad_h.shape[0], -1), t, recurrent[t])
                grad_prev.addcmul_(grad_h, direct_views[t])
            grad_weight, grad_gain = projections[0].parameter_grads(grad_gates, h_in)
            grad_bias = grad_gates.sum(0) if has_bias else None
            # input side: equal to the hidden side for r and z; for n it is dL/dh_t * input_n, all steps at once
            torch.mul(grad_in[batch:], input_n, out=grad_gates[:, 2 * hidden:])
        else:
            coef_zn, coef_r = coef[:, 1:], torch.mul(h_in, r, out=c_r).addcmul_(c_r, r, value=-1.0)  # h~ r (1 - r)
            r_in = r if masks.recurrent is None else r * masks.recurrent  # d(r*h~)/dh_{t-1}
            zn_views, cr_views, r_in_views = views(coef_zn), views(coef_r), views(r_in)
            g_zn_views = views(grad_gates[:, hidden:].unflatten(1, (2, hidden)))
            g_n_views, g_r_views = views(grad_gates[:, 2 * hidden:]), views(grad_gates[:, :hidden])
            g_rz_views = views(grad_gates[:, : 2 * hidden])
            if kernels is not None:
                kernels.gru_backward(grad_in, coef, direct, grad_gates, buffers, split, r_in, masks.recurrent,
                                     packing.batch_sizes, False, LAYER_NORM_EPS)
            for t in steps:
                grad_h = grad_views[t + 1]
                torch.mul(grad_h.unsqueeze(1), zn_views[t], out=g_zn_views[t])
                grad_rh = projections[1].grad_inputs(g_n_views[t], t)  # d loss / d (r * h~)
                torch.mul(grad_rh, cr_views[t], out=g_r_views[t])
                grad_prev = step_rows(grad_views, t, grad_h.shape[0])
                grad_prev.addcmul_(grad_rh, r_in_views[t]).addcmul_(grad_h, direct_views[t])
                projections[0].grad_into(grad_prev, g_rz_views[t], t, recurrent[t])
            w_rz, gain_rz = projections[0].parameter_grads(grad_gates[:, : 2 * hidden], h_in)
            w_n, gain_n = projections[1].parameter_grads(grad_gates[:, 2 * hidden:], hidden_terms)
            grad_weight = torch.cat((w_rz, w_n))
            grad_gain = None if gain_rz is None else torch.cat((gain_rz, gain_n))
            grad_bias = grad_gates.sum(0) if has_bias else None
        return grad_gates, grad_in[:batch], grad_weight, grad_bias, grad_gain, None, None, None
