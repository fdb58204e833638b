"""The reference engine: gradcheck through time, padding invariance, reverse direction."""

import pytest
import torch

from rnnkit.engine import run_direction
from tests.helpers import CELL_OPTIONS, assert_close, gradcheck_engine, make_cell, option_id


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_engine_gradcheck_float64_with_lengths(case, reverse):
    assert gradcheck_engine(run_direction, case, reverse)


def test_reverse_equals_forward_on_flipped_sequences():
    cell = make_cell("lstm", {"layer_norm": True})
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    state = cell.init_state(3)
    out, final = run_direction(cell, x, state, lengths, reverse=True)
    for b, n in enumerate(lengths.tolist()):
        flipped = x[:n, b:b + 1].flip(0)
        out_b, final_b = run_direction(cell, flipped, tuple(s[b:b + 1] for s in state))
        assert_close(out[:n, b:b + 1], out_b.flip(0))
        assert torch.count_nonzero(out[n:, b]) == 0
        for f, fb in zip(final, final_b):
            assert_close(f[b:b + 1], fb)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_padding_does_not_change_outputs_states_or_gradients(case, reverse):
    cell = make_cell(*case)
    lengths = [5, 2, 4]
    T = 7  # more padding than any sequence needs
    xs = [torch.randn(n, 3, dtype=torch.float64) for n in lengths]
    states = [tuple(torch.randn(1, 4, dtype=torch.float64) for _ in range(cell.state_size)) for _ in lengths]
    padded = torch.full((T, 3, 3), 7.5, dtype=torch.float64)  # garbage in the padding must not leak
    for b, seq in enumerate(xs):
        padded[: len(seq), b] = seq
    padded.requires_grad_()
    batch_state = tuple(torch.cat([s[k] for s in states]) for k in range(cell.state_size))
    out, final = run_direction(cell, padded, batch_state, torch.tensor(lengths), reverse)
    weights = torch.randn(T, 3, 4, dtype=torch.float64)
    loss = (out * weights).sum() + sum(f.sum() for f in final)
    batch_grads = torch.autograd.grad(loss, [padded, *cell.parameters()])
    assert torch.count_nonzero(batch_grads[0][max(lengths):]) == 0

    alone_param_grads = [torch.zeros_like(p) for p in cell.parameters()]
    for b, (seq, state) in enumerate(zip(xs, states)):
        seq = seq[:, None].clone().requires_grad_()
        out_b, final_b = run_direction(cell, seq, state, None, reverse)
        assert_close(out[: len(seq), b], out_b[:, 0])
        assert torch.count_nonzero(out[len(seq):, b]) == 0
        for f, fb in zip(final, final_b):
            assert_close(f[b], fb[0])
        loss_b = (out_b[:, 0] * weights[: len(seq), b]).sum() + sum(f.sum() for f in final_b)
        grads = torch.autograd.grad(loss_b, [seq, *cell.parameters()])
        assert_close(batch_grads[0][: len(seq), b], grads[0][:, 0])
        assert torch.count_nonzero(batch_grads[0][len(seq):, b]) == 0
        for total, g in zip(alone_param_grads, grads[1:]):
            total += g
    for a, b in zip(batch_grads[1:], alone_param_grads):
        assert_close(a, b)
