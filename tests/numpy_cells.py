"""Independent float64 NumPy implementations of one step of each cell: the reference for the options
torch.nn lacks (layer norm, peepholes, reset-before GRU, recurrent dropout, zoneout)."""

import numpy as np

EPS = 1e-5


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def layer_norm(v, gain=1.0, shift=0.0):
    mean = v.mean(-1, keepdims=True)
    var = ((v - mean) ** 2).mean(-1, keepdims=True)
    return (v - mean) / np.sqrt(var + EPS) * gain + shift


def params(cell):
    return {name: p.detach().double().numpy() for name, p in cell.named_parameters()}


def gate_terms(p, inputs, which, rows, hidden, layer_norm_on):
    """LN_per_gate(inputs @ W[rows].T) + b[rows] for which in ('ih', 'hh')."""
    out = inputs @ p[f"weight_{which}"][rows].T
    if layer_norm_on:
        gain = p[f"ln_{which}_weight"][rows]
        chunks = [layer_norm(out[:, k:k + hidden]) * gain[k:k + hidden] for k in range(0, out.shape[1], hidden)]
        out = np.concatenate(chunks, axis=1)
    if f"bias_{which}" in p:
        out = out + p[f"bias_{which}"][rows]
    return out


def step(cell, x, state, rec_mask=None, zone_masks=None):
    """One step of ``cell`` in NumPy; returns the new state tuple."""
    p = params(cell)
    H = cell.hidden_size
    ln = cell.layer_norm
    h = state[0]
    h_in = h if rec_mask is None else h * rec_mask
    every = slice(None)
    if cell.kind.startswith("rnn"):
        pre = gate_terms(p, x, "ih", every, H, ln) + gate_terms(p, h_in, "hh", every, H, ln)
        new = (np.tanh(pre) if cell.nonlinearity == "tanh" else np.maximum(pre, 0.0),)
    elif cell.kind == "gru":
        gx = gate_terms(p, x, "ih", every, H, ln)
        if cell.reset_after:
            gh = gate_terms(p, h_in, "hh", every, H, ln)
            r = sigmoid(gx[:, :H] + gh[:, :H])
            z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
        else:
            gh = gate_terms(p, h_in, "hh", slice(0, 2 * H), H, ln)
            r = sigmoid(gx[:, :H] + gh[:, :H])
            z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gx[:, 2 * H:] + gate_terms(p, r * h_in, "hh", slice(2 * H, 3 * H), H, ln))
        new = ((1 - z) * n + z * h,)
    else:
        c = state[1]
        g = gate_terms(p, x, "ih", every, H, ln) + gate_terms(p, h_in, "hh", every, H, ln)
        gi, gf, gg, go = (g[:, k * H:(k + 1) * H] for k in range(4))
        if cell.peepholes:
            pi, pf, po = (p["weight_peephole"][k * H:(k + 1) * H] for k in range(3))
            gi, gf = gi + pi * c, gf + pf * c
        c_new = sigmoid(gf) * c + sigmoid(gi) * np.tanh(gg)
        if cell.peepholes:
            go = go + po * c_new
        shown = layer_norm(c_new, p["ln_cell_weight"], p["ln_cell_bias"]) if ln else c_new
        new = (sigmoid(go) * np.tanh(shown), c_new)
    if zone_masks is not None:
        new = tuple(m * old + (1 - m) * n for n, old, m in zip(new, state, zone_masks))
    return new
