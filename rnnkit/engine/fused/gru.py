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

from rnnkit.engine.fused.common import Masks, Projection, first_order_only, step_rows


class FusedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, h0, weight_hh, bias_hh, ln_gain, packing, masks: Masks, reset_after: bool):
        batch, hidden = packing.batch, h0.shape[1]
        rows_total = packing.rows
        if reset_after or bias_hh is None:
            act = gates.clone()  # [N, 3H] input terms; becomes r, z, n
        else:
            act = gates + bias_hh
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
            term_views = views(hidden_terms)
            term_rz_views, term_n_views = views(hidden_terms[:, : 2 * hidden]), views(hidden_terms[:, 2 * hidden:])
        else:
            split = (slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden))
            projections = tuple(Projection(weight_hh[s], None if ln_gain is None else ln_gain[s], packing, hidden)
                                for s in split)
            hidden_terms = act.new_empty(rows_total, hidden)  # [N, H] r * h~, input of R_n
            term_views = views(hidden_terms)
        for t, rows in enumerate(packing.batch_sizes):
            h_prev = step_rows(state_views, t, rows)
            h_in = h_prev if recurrent[t] is None else h_prev * recurrent[t]
            if reset_after:
                projections[0].write(term_views[t], h_in, bias_hh, t)
                rz_views[t].add_(term_rz_views[t]).sigmoid_()
                n_views[t].addcmul_(r_views[t], term_n_views[t]).tanh_()
            else:
                projections[0].add_into(rz_views[t], h_in, t)
                rz_views[t].sigmoid_()
                projections[1].add_into(n_views[t], torch.mul(r_views[t], h_in, out=term_views[t]), t)
                n_views[t].tanh_()
            if zoneout is None:
                torch.lerp(n_views[t], h_prev, z_views[t], out=state_views[t + 1])
            else:
                torch.lerp(n_views[t], h_prev, z_views[t], out=candidate_views[t])
                torch.lerp(candidate_views[t], h_prev, zoneout[t], out=state_views[t + 1])
        ctx.save_for_backward(states)
        ctx.buffers = (act, hidden_terms)
        ctx.setup = (packing, masks, reset_after, projections, bias_hh is not None)
        return states

    @staticmethod
    @first_order_only
    def backward(ctx, grad_states):
        (states,) = ctx.saved_tensors
        act, hidden_terms = ctx.buffers
        packing, masks, reset_after, projections, has_bias = ctx.setup
        for projection in projections:
            projection.begin_backward()
        batch, hidden = packing.batch, states.shape[1]
        views = packing.step_views
        r, z, n = act.chunk(3, dim=1)
        h_prev = packing.previous_rows(states)
        h_in = h_prev if masks.recurrent is None else h_prev * masks.recurrent
        # local derivatives of h_t w.r.t. each pre-activation, per unit of dL/dh_t  [N, H] each
        keep = None if masks.zoneout is None else 1 - masks.zoneout[0]
        d_n = (1 - z) * (1 - n * n)
        d_z = (h_prev - n) * z * (1 - z)
        direct = z.clone()  # dh_t / dh_{t-1} along the direct path
        if keep is not None:
            d_n.mul_(keep)
            d_z.mul_(keep)
            direct.mul_(keep).add_(masks.zoneout[0])
        grad_in = grad_states.clone()  # [B+N, H]
        grad_views, direct_views = views(grad_in), views(direct)
        grad_gates = torch.empty_like(act)  # [N, 3H] d loss / d pre-activations (input side)
        recurrent = masks.recurrent_views(packing)
        steps = range(len(packing.batch_sizes) - 1, -1, -1)
        if reset_after:
            d_r = d_n * hidden_terms[:, 2 * hidden:] * r * (1 - r)
            coef_x = torch.stack((d_r, d_z, d_n), dim=1)  # [N, 3, H]
            coef_h = torch.stack((d_r, d_z, d_n * r), dim=1)
            grad_hidden = torch.empty_like(act)  # [N, 3H] d loss / d (R(h~) + b_hh)
            cx_views, ch_views = views(coef_x), views(coef_h)
            gx_views, gh_views = views(grad_gates.view(-1, 3, hidden)), views(grad_hidden.view(-1, 3, hidden))
            for t in steps:
                grad_h = grad_views[t + 1]
                rows = grad_h.shape[0]
                torch.mul(grad_h.unsqueeze(1), cx_views[t], out=gx_views[t])
                torch.mul(grad_h.unsqueeze(1), ch_views[t], out=gh_views[t])
                grad_prev = step_rows(grad_views, t, rows)
                projections[0].grad_into(grad_prev, gh_views[t].view(rows, -1), t, recurrent[t])
                grad_prev.addcmul_(grad_h, direct_views[t])
            grad_weight, grad_gain = projections[0].parameter_grads(grad_hidden, h_in)
            grad_bias = grad_hidden.sum(0) if has_bias else None
        else:
            coef_zn = torch.stack((d_z, d_n), dim=1)  # [N, 2, H]
            coef_r = h_in * r * (1 - r)
            r_in = r if masks.recurrent is None else r * masks.recurrent  # d(r*h~)/dh_{t-1}
            zn_views, cr_views, r_in_views = views(coef_zn), views(coef_r), views(r_in)
            g_zn_views = views(grad_gates[:, hidden:].unflatten(1, (2, hidden)))
            g_n_views, g_r_views = views(grad_gates[:, 2 * hidden:]), views(grad_gates[:, :hidden])
            g_rz_views = views(grad_gates[:, : 2 * hidden])
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
