"""The fused engine equals the reference engine: outputs, final states and every gradient."""

import itertools

import pytest
import torch

import rnnkit as rk
from rnnkit.engine import fused, reference
from tests.helpers import CELL_OPTIONS, make_cell, option_id, tolerance

LENGTHS = {"full": None, "mixed": [5, 2, 4, 5], "all-short": [3, 2, 1, 3]}  # T = 5


def run_both(cell, dtype, lengths, reverse, noise, T=5, B=4):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(T, B, cell.input_size, generator=gen, dtype=dtype)
    state = tuple(torch.randn(B, cell.hidden_size, generator=gen, dtype=dtype) for _ in range(cell.state_size))
    weights_out = torch.randn(T, B, cell.hidden_size, generator=gen, dtype=dtype)
    weights_final = [torch.randn(B, cell.hidden_size, generator=gen, dtype=dtype) for _ in state]
    lengths = None if lengths is None else torch.tensor(lengths)
    results = []
    for engine in (reference, fused):
        x_leaf = x.clone().requires_grad_()
        state_leaf = tuple(s.clone().requires_grad_() for s in state)
        out, final = engine.run_direction(cell, x_leaf, state_leaf, lengths, reverse, noise)
        loss = (out * weights_out).sum() + sum((f * w).sum() for f, w in zip(final, weights_final))
        grads = torch.autograd.grad(loss, [x_leaf, *state_leaf, *cell.parameters()])
        results.append([out, *final, *grads])
    return results


def assert_engines_agree(results, dtype, names):
    tol = tolerance(dtype)
    for name, ours, theirs in zip(names, results[1], results[0]):
        torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


def names_of(cell):
    return ["outputs", *[f"final state {k}" for k in range(cell.state_size)], "grad x",
            *[f"grad state {k}" for k in range(cell.state_size)], *[f"grad {n}" for n, _ in cell.named_parameters()]]


@pytest.mark.parametrize(("lengths", "reverse", "noisy"), list(itertools.product(LENGTHS, [False, True], [False, True])))
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_fused_equals_reference_float64(case, lengths, reverse, noisy):
    name, options = case
    if noisy:
        options = {**options, "recurrent_dropout": 0.3, "zoneout": 0.25}
    cell = make_cell(name, options)
    noise = cell.sample_noise(5, 4)
    assert (noise is not None) == noisy
    assert_engines_agree(run_both(cell, torch.float64, LENGTHS[lengths], reverse, noise), torch.float64, names_of(cell))


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_fused_equals_reference_float32(case):
    name, options = case
    cell = make_cell(name, {**options, "zoneout": 0.1}, dtype=torch.float32).eval()
    noise = cell.sample_noise(5, 4)
    assert_engines_agree(run_both(cell, torch.float32, LENGTHS["mixed"], True, noise), torch.float32, names_of(cell))


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_fused_gradcheck_float64(case):
    name, options = case
    cell = make_cell(name, {**options, "recurrent_dropout": 0.3, "zoneout": 0.25})
    T, B = 3, 3
    noise = cell.sample_noise(T, B)
    lengths = torch.tensor([3, 1, 2])
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(B, 4, dtype=torch.float64, requires_grad=True) for _ in range(cell.state_size))

    def run(x, *tensors):  # the cell's parameters are inputs too: gradcheck perturbs them in place
        out, final = fused.run_direction(cell, x, tensors[: cell.state_size], lengths, True, noise)
        return (out, *final)

    assert torch.autograd.gradcheck(run, (x, *state, *cell.parameters()))


def test_double_backward_raises_a_clear_error():
    cell = make_cell("gru", {})
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = fused.run_direction(cell, x, cell.init_state(2))
    with pytest.raises(RuntimeError, match="double backward .* is not supported; use backend='reference'"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_fused_refuses_cells_it_does_not_know():
    class MyCell(rk.GRUCell):
        pass

    layer = rk.RNN(3, 4, cell=MyCell, backend="fused")
    with pytest.raises(ValueError, match="backend='fused' cannot run custom cell MyCell"):
        layer(torch.randn(2, 3, 3))
    assert rk.RNN(3, 4, cell=MyCell)(torch.randn(2, 3, 3))[0].shape == (2, 3, 4)  # auto falls back


def test_fused_layer_matches_reference_layer_with_everything_on():
    torch.manual_seed(3)
    ours = rk.LSTM(3, 4, 2, bidirectional=True, layer_norm=True, peepholes=True, recurrent_dropout=0.2,
                   zoneout=0.1, dropout=0.3, backend="fused").double()
    ref = rk.LSTM(3, 4, 2, bidirectional=True, layer_norm=True, peepholes=True, recurrent_dropout=0.2,
                  zoneout=0.1, dropout=0.3, backend="reference").double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    lengths = [6, 1, 4]
    results = []
    for layer in (ours, ref):
        torch.manual_seed(5)
        out, (h, c) = layer(x, lengths)
        grads = torch.autograd.grad(out.sum() + h.sum() + c.sum(), list(layer.parameters()))
        results.append([out, h, c, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
