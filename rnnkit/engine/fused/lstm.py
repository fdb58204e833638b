r"""Fused LSTM: the whole sequence forward, BPTT by hand.

Gate order i, f, g, o as in torch.nn; with :math:`R` the (layer-normalised) recurrent projection,
:math:`p` the peepholes and :math:`\hat c = \mathrm{LN}_c(\tilde c)` (identity without layer norm):

.. math::
    a = g_t + R(m \odot h_{t-1}),\quad i, f = \sigma(a_{i,f} + p_{i,f} c_{t-1}),\quad g = \tanh a_g,\quad
    \tilde c = f c_{t-1} + i g,\quad o = \sigma(a_o + p_o \tilde c),\quad \tilde h = o \tanh \hat c

and zoneout mixes :math:`(\tilde h, \tilde c)` with :math:`(h_{t-1}, c_{t-1})`.
Backward, in the compiled loops: each step recomputes :math:`\tanh \hat c` from :math:`\tilde c` (and the
cell norm's statistics) and its local derivatives from the activations and :math:`c_{t-1}` in one pass,
then one recurrent GEMM, so neither :math:`\tanh \hat c` nor any derivative is kept for all steps. The
Python loops precompute every local derivative for all steps at once instead, so that a step there costs
four pointwise ops and one recurrent GEMM.
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
    layer_norm_backward,
    layer_norm_forward,
    normalised,
    final_states,
    state_grads,
    state_outputs,
    step_rows,
    take_gates,
    tanh_,
)
from rnnkit.engine.fused.inputs import combined_bias


class FusedLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, h0, c0, weight_hh, bias_hh, ln_gain, peephole, cell_gain, cell_bias,
                packing, masks: Masks):
        batch, hidden, rows_total = packing.batch, h0.shape[1], packing.rows
        act = take_gates(ctx, gates, bias_hh)  # [N, 4H] pre-activations -> i, f, g, o
        hs = workspace.empty((batch + rows_total, hidden), act)  # [B+N, H]
        cs = workspace.empty((batch + rows_total, hidden), act)
        hs[:batch], cs[:batch] = h0, c0
        cell_tilde = cs[batch:] if masks.zoneout is None else workspace.empty((rows_total, hidden), act)  # c~ [N, H]
        kernels = compiled.ops() if compiled.usable_for(act) else None
        projection = Projection(weight_hh, ln_gain, packing, hidden)
        if kernels is not None:  # cell_stats: (mean, rstd) [N] each; tanh(c^) only per step (backward recomputes it)
            cell_stats = (act.new_empty(rows_total), act.new_empty(rows_total)) if cell_gain is not None else None
            tanh_c = None
            kernels.lstm_forward(act, hs, cs, cell_tilde, act.new_empty(batch, hidden), projection.compiled_buffers(),
                                 peephole, cell_gain, cell_bias, *(cell_stats or (None, None)), masks.recurrent,
                                 *(masks.zoneout or (None, None)), None, [], None, packing.batch_sizes,
                                 LAYER_NORM_EPS)
        else:  # cell_stats: a (mean, rstd) pair per step; tanh_c: tanh(LN(c~)) of every row
            tanh_c = workspace.empty((rows_total, hidden), act)
            cell_stats = _forward_steps(act, hs, cs, cell_tilde, tanh_c, projection, peephole, cell_gain, cell_bias,
                                        packing, masks)
        ctx.save_for_backward(hs, peephole, cell_gain, cell_bias, act, cs, cell_tilde, tanh_c)  # see take_gates
        ctx.cell_stats = cell_stats
        ctx.setup = (packing, masks, projection, bias_hh is not None, kernels)
        return *state_outputs(hs, packing), final_states(cs, packing), act

    @staticmethod
    @first_order_only
    def backward(ctx, grad_sequence, grad_final_h, grad_final_c, _):
        hs, peephole, cell_gain, cell_bias, act, cs, cell_tilde, tanh_c = ctx.saved_tensors
        cell_stats = ctx.cell_stats
        packing, masks, projection, has_bias, kernels = ctx.setup
        projection.begin_backward()
        batch, hidden = packing.batch, hs.shape[1]
        i, f, g, o = act.chunk(4, dim=1)
        c_prev = packing.previous_rows(cs)
        h_in = packing.previous_rows(hs)
        if masks.recurrent is not None:
            h_in = h_in * masks.recurrent
        # [N, 4H]; the compiled steps may write it over act, each step's rows once read (compiled.may_reuse_saved)
        grad_gates = act if kernels is not None and compiled.may_reuse_saved() else workspace.empty_like(act)
        grad_in = state_grads(grad_sequence, grad_final_h, hs, packing)  # [B+N, H]
        grad_c = (torch.zeros_like(h_in[:batch]) if grad_final_c is None  # [B, H] dL/dc_t
                  else grad_final_c.clone(memory_format=torch.contiguous_format))
        grad_shown = grad_cell = None
        if kernels is not None:  # each compiled step recomputes its local derivatives and tanh(c^)
            if cell_gain is not None:  # d loss / d c^ of one step's rows at a time [B, H], and the cell norm's
                grad_shown = act.new_empty(batch, hidden)  # gain and bias gradients summed by the loops [2, H]
                grad_cell = torch.zeros(2, hidden, dtype=torch.float64, device=act.device)
            kernels.lstm_backward(grad_in, grad_c, act.new_empty(batch, hidden), cs, act, grad_gates,
                                  projection.compiled_buffers(backward=True), peephole, cell_tilde, cell_gain,
                                  cell_bias, *(cell_stats or (None, None)), grad_shown, grad_cell, masks.recurrent,
                                  *(masks.zoneout or (None, None)), packing.batch_sizes, LAYER_NORM_EPS)
        else:  # the Python loops: local derivatives for all steps at once, built in place  [N, H] each
            grad_shown = workspace.empty_like(cell_tilde) if cell_gain is not None else None  # d loss / d c^
            to_cell = torch.mul(tanh_c, tanh_c).neg_().add_(1.0).mul_(o)  # d h~ / d c^ = o (1 - tanh^2)
            to_output = torch.mul(tanh_c, o).addcmul_(tanh_c, o * o, value=-1.0)  # d h~ / d a_o = tanh o (1 - o)
            if masks.zoneout is not None:
                to_cell.addcmul_(to_cell, masks.zoneout[0], value=-1.0)
                to_output.addcmul_(to_output, masks.zoneout[0], value=-1.0)
            cell_coef = workspace.empty((act.shape[0], 3, hidden), act)  # d c~ / d a_{i,f,g}  [N, 3, H]
            c_i, c_f, c_g = cell_coef.unbind(1)
            torch.mul(g, i, out=c_i).addcmul_(c_i, i, value=-1.0)
            torch.mul(c_prev, f, out=c_f).addcmul_(c_f, f, value=-1.0)
            torch.mul(g, g, out=c_g).neg_().add_(1.0).mul_(i)
            _backward_steps(grad_in, grad_c, grad_gates, grad_shown, to_cell, to_output, cell_coef, f, cell_tilde,
                            cell_stats, peephole, cell_gain, projection, packing, masks)
        grad_weight, grad_gain = projection.parameter_grads(grad_gates, h_in)
        grad_bias = grad_gates.sum(0) if has_bias else None
        grad_peephole = grad_cell_gain = grad_cell_bias = None
        if peephole is not None:
            grad_peephole = torch.cat(((grad_gates[:, :hidden] * c_prev).sum(0),
                                       (grad_gates[:, hidden: 2 * hidden] * c_prev).sum(0),
                                       (grad_gates[:, 3 * hidden:] * cell_tilde).sum(0)))
        if grad_cell is not None:
            grad_cell_gain, grad_cell_bias = grad_cell.to(cell_gain.dtype).unbind(0)
        elif cell_gain is not None:
            mean = torch.cat([m for m, _ in cell_stats])
            rstd = torch.cat([r for _, r in cell_stats])
            grad_cell_gain = (grad_shown * normalised(cell_tilde, mean, rstd)).sum(0)
            grad_cell_bias = grad_shown.sum(0)
        return (grad_gates, grad_in[:batch], grad_c, grad_weight, grad_bias, grad_gain, grad_peephole,
                grad_cell_gain, grad_cell_bias, None, None)


def infer(cell, x, h0, c0, packing, masks: Masks, kernels) -> Callable[[], tuple[Tensor, Tensor, Tensor]]:
    """:class:`FusedLSTM`'s forward where autograd records nothing, with each step's input projection done in the
    compiled loop (loops.cpp's INPUTS STEP BY STEP) instead of one GEMM over all packed rows ``x [N, I]`` up front:
    the gates live in a ``[B, 4H]`` scratch, not an ``[N, 4H]`` buffer. Starts the loop and returns what gives
    every step's ``h [N, H]`` (a view) and the final ``h``, ``c`` once it is done (a paired loop may run later:
    loops.cpp's PAIRED DIRECTIONS)."""
    batch, hidden, rows_total = packing.batch, cell.hidden_size, packing.rows
    hs = workspace.empty((batch + rows_total, hidden), x)
    cs = workspace.empty((batch + rows_total, hidden), x)
    hs[:batch], cs[:batch] = h0, c0
    cell_tilde = cs[batch:] if masks.zoneout is None else workspace.empty((rows_total, hidden), x)
    # the parameters from the cell's dict: read through nn.Module.__getattr__, each costs ~0.6 us, which counts in a
    # generation loop (a call of one step, ~50 us)
    norm, parameters = cell.layer_norm, cell._parameters
    inputs = Projection(parameters["weight_ih"], parameters["ln_ih_weight"] if norm else None, packing, hidden,
                        per_step=True)
    recurrent = Projection(parameters["weight_hh"], parameters["ln_hh_weight"] if norm else None, packing, hidden,
                           per_step=True)
    bias = combined_bias(parameters["bias_ih"], parameters["bias_hh"])
    kernels.lstm_forward(x.new_empty(batch, 4 * hidden), hs, cs, cell_tilde, x.new_empty(batch, hidden),
                         recurrent.compiled_buffers(), parameters["weight_peephole"] if cell.peepholes else None,
                         parameters["ln_cell_weight"] if norm else None, parameters["ln_cell_bias"] if norm else None,
                         *((x.new_empty(rows_total), x.new_empty(rows_total)) if norm else (None, None)),
                         masks.recurrent, *(masks.zoneout or (None, None)), x.contiguous(), inputs.compiled_buffers(),
                         bias, packing.batch_sizes, LAYER_NORM_EPS)
    return lambda: (*state_outputs(hs, packing), final_states(cs, packing))


def _forward_steps(act, hs, cs, cell_tilde, tanh_c, projection, peephole, cell_gain, cell_bias, packing, masks):
    """The forward loop in Python (what csrc/loops.cpp's lstm_forward does); returns the cell layer norm's
    per-step (mean, rstd)."""
    hidden, views = hs.shape[1], packing.step_views
    h_views, c_views, ct_views, tc_views = views(hs), views(cs), views(cell_tilde), views(tanh_c)
    act_views, if_views = views(act), views(act[:, : 2 * hidden])
    i_views, f_views = views(act[:, :hidden]), views(act[:, hidden: 2 * hidden])
    g_views, o_views = views(act[:, 2 * hidden: 3 * hidden]), views(act[:, 3 * hidden:])
    recurrent = masks.recurrent_views(packing)
    zoneout = masks.zoneout
    if peephole is not None:
        if_3d_views = views(act[:, : 2 * hidden].unflatten(1, (2, hidden)))
        peep_if, peep_o = peephole[: 2 * hidden].view(2, hidden), peephole[2 * hidden:]
    if zoneout is not None:
        h_tilde_views = views(act.new_empty(cell_tilde.shape))
        zone_h, zone_c = views(zoneout[0]), views(zoneout[1])
    cell_stats = []
    for t, rows in enumerate(packing.batch_sizes):
        h_prev, c_prev = step_rows(h_views, t, rows), step_rows(c_views, t, rows)
        projection.add_into(act_views[t], h_prev if recurrent[t] is None else h_prev * recurrent[t], t)
        if peephole is not None:
            if_3d_views[t].addcmul_(c_prev.unsqueeze(1), peep_if)
        if_views[t].sigmoid_()
        tanh_(g_views[t])
        c_t = torch.mul(f_views[t], c_prev, out=ct_views[t]).addcmul_(i_views[t], g_views[t])
        if peephole is not None:
            o_views[t].addcmul_(c_t, peep_o)
        o_views[t].sigmoid_()
        if cell_gain is not None:
            shown, mean, rstd = layer_norm_forward(c_t, cell_gain, cell_bias)
            cell_stats.append((mean, rstd))
            tanh_(shown, out=tc_views[t])
        else:
            tanh_(c_t, out=tc_views[t])
        if zoneout is None:
            torch.mul(o_views[t], tc_views[t], out=h_views[t + 1])
        else:
            torch.mul(o_views[t], tc_views[t], out=h_tilde_views[t])
            torch.lerp(h_tilde_views[t], h_prev, zone_h[t], out=h_views[t + 1])
            torch.lerp(c_t, c_prev, zone_c[t], out=c_views[t + 1])
    return cell_stats


def _backward_steps(grad_in, grad_c, grad_gates, grad_shown, to_cell, to_output, cell_coef, f, cell_tilde,
                    cell_stats, peephole, cell_gain, projection, packing, masks):
    """The backward loop in Python (csrc/loops.cpp's lstm_backward, which recomputes the derivatives this one
    reads from to_cell, to_output and cell_coef), filling grad_in, grad_c,
    grad_gates and grad_shown in place."""
    hidden, views = grad_in.shape[1], packing.step_views
    gate_views, ifg_views = views(grad_gates), views(grad_gates[:, : 3 * hidden].unflatten(1, (3, hidden)))
    go_views = views(grad_gates[:, 3 * hidden:])
    tc_views, to_views, coef_views, f_views = views(to_cell), views(to_output), views(cell_coef), views(f)
    grad_views = views(grad_in)
    recurrent = masks.recurrent_views(packing)
    if cell_gain is not None:
        shown_views, ct_views = views(grad_shown), views(cell_tilde)
    if peephole is not None:
        peep_i, peep_f, peep_o = peephole.view(3, hidden)
        gi_views, gf_views = views(grad_gates[:, :hidden]), views(grad_gates[:, hidden: 2 * hidden])
    if masks.zoneout is not None:
        zone_h, zone_c, keep_c = views(masks.zoneout[0]), views(masks.zoneout[1]), views(1 - masks.zoneout[1])
        scratch = torch.empty_like(grad_c)
    rows_now, grad_c_rows = grad_c.shape[0], grad_c
    for t in range(len(packing.batch_sizes) - 1, -1, -1):
        grad_h = grad_views[t + 1]
        rows = grad_h.shape[0]
        if rows != rows_now:
            rows_now, grad_c_rows = rows, grad_c[:rows]
        grad_ct = grad_c_rows if masks.zoneout is None else torch.mul(grad_c_rows, keep_c[t], out=scratch[:rows])
        if cell_gain is not None:
            shown = torch.mul(grad_h, tc_views[t], out=shown_views[t])
            mean, rstd = cell_stats[t]
            grad_ct.add_(layer_norm_backward(shown, ct_views[t], mean, rstd, cell_gain))
        else:
            grad_ct.addcmul_(grad_h, tc_views[t])
        grad_o = torch.mul(grad_h, to_views[t], out=go_views[t])
        if peephole is not None:
            grad_ct.addcmul_(grad_o, peep_o)
        torch.mul(grad_ct.unsqueeze(1), coef_views[t], out=ifg_views[t])
        if masks.zoneout is None:
            grad_c_rows.mul_(f_views[t])
        else:
            grad_c_rows.mul_(zone_c[t]).addcmul_(grad_ct, f_views[t])
        if peephole is not None:
            grad_c_rows.addcmul_(gi_views[t], peep_i).addcmul_(gf_views[t], peep_f)
        grad_prev = step_rows(grad_views, t, rows)
        projection.grad_into(grad_prev, gate_views[t], t, recurrent[t])
        if masks.zoneout is not None:
            grad_prev.addcmul_(grad_h, zone_h[t])
