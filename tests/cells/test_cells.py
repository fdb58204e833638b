import numpy as np
import pytest
import torch
from torch import nn

import rnnkit as rk
from tests import numpy_cells
from tests.helpers import CELL_OPTIONS, assert_close, make_cell, option_id


def run_step(cell, x, state, noise=None):
    _, new = cell(x, state, noise)
    return new


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_step_matches_numpy_reference(case):
    cell = make_cell(*case)
    x = torch.randn(5, 3, dtype=torch.float64)
    state = tuple(torch.randn(5, 4, dtype=torch.float64) for _ in range(cell.state_size))
    output, new = cell(x, state)
    expected = numpy_cells.step(cell, x.numpy(), tuple(s.numpy() for s in state))
    for ours, theirs in zip(new, expected):
        np.testing.assert_allclose(ours.detach().numpy(), theirs, atol=1e-12, rtol=1e-12)
    assert output is new[0]


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_step_with_recurrent_dropout_and_zoneout_matches_numpy_reference(case):
    name, options = case
    cell = make_cell(name, {**options, "recurrent_dropout": 0.3, "zoneout": 0.2})
    noise = cell.sample_noise(1, 5)
    assert noise.recurrent is not None and noise.zoneout is not None
    x = torch.randn(5, 3, dtype=torch.float64)
    state = tuple(torch.randn(5, 4, dtype=torch.float64) for _ in range(cell.state_size))
    new = run_step(cell, x, state, noise.step(0))
    expected = numpy_cells.step(cell, x.numpy(), tuple(s.numpy() for s in state),
                                rec_mask=noise.recurrent.numpy(),
                                zone_masks=[m[0].numpy() for m in noise.zoneout])
    for ours, theirs in zip(new, expected):
        np.testing.assert_allclose(ours.detach().numpy(), theirs, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_step_gradcheck_float64(case):
    name, options = case
    cell = make_cell(name, {**options, "recurrent_dropout": 0.3, "zoneout": 0.2})
    noise = cell.sample_noise(1, 2).step(0)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(cell.state_size))

    def step(x, *tensors):  # parameters are inputs too: gradcheck perturbs them in place
        return cell(x, tensors[: cell.state_size], noise)[1]

    assert torch.autograd.gradcheck(step, (x, *state, *cell.parameters()))


@pytest.mark.parametrize(("name", "torch_cell"), [("rnn", nn.RNNCell), ("gru", nn.GRUCell), ("lstm", nn.LSTMCell)])
def test_plain_cells_match_torch_cells(name, torch_cell):
    theirs = torch_cell(3, 4).double()
    ours = rk.cells.CELLS[name](3, 4).double()
    with torch.no_grad():
        for param in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ours, param).copy_(getattr(theirs, param))
    x = torch.randn(5, 3, dtype=torch.float64)
    state = tuple(torch.randn(5, 4, dtype=torch.float64) for _ in range(ours.state_size))
    expected = theirs(x, state if name == "lstm" else state[0])
    expected = expected if name == "lstm" else (expected,)
    for a, b in zip(run_step(ours, x, state), expected):
        assert_close(a, b)


def test_zoneout_in_eval_is_the_expectation():
    cell = make_cell("lstm", {"zoneout": 0.25}).eval()
    plain = make_cell("lstm", {})
    plain.load_state_dict(cell.state_dict())
    x = torch.randn(5, 3, dtype=torch.float64)
    state = (torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64))
    noise = cell.sample_noise(7, 5)
    new = run_step(cell, x, state, noise.step(3))
    candidate = run_step(plain, x, state)
    for got, old, cand in zip(new, state, candidate):
        assert_close(got, 0.25 * old + 0.75 * cand)


def test_recurrent_dropout_mask_is_one_per_sequence_and_off_in_eval():
    cell = rk.LSTMCell(3, 200, recurrent_dropout=0.4)
    noise = cell.sample_noise(50, 300)
    mask = noise.recurrent
    assert mask.shape == (300, 200)
    assert mask.unique().tolist() == pytest.approx([0.0, 1 / 0.6])
    assert abs((mask == 0).float().mean().item() - 0.4) < 0.01
    assert noise.step(0).recurrent is noise.step(49).recurrent
    assert cell.eval().sample_noise(50, 300) is None


def test_default_initialisation():
    lstm = rk.LSTMCell(3, 8)
    for block in lstm.weight_hh.detach().chunk(4):
        assert_close(block.T @ block, torch.eye(8), dtype=torch.float32)
    forget = lstm.bias_ih.detach()[8:16]
    assert torch.equal(forget, torch.ones(8))
    assert torch.count_nonzero(lstm.bias_ih).item() == 8 and torch.count_nonzero(lstm.bias_hh).item() == 0
    xavier_bound = (6 / (3 + 8)) ** 0.5
    assert lstm.weight_ih.abs().max().item() <= xavier_bound
    relu = rk.SimpleRNNCell(3, 5, nonlinearity="relu")
    assert torch.equal(relu.weight_hh.detach(), torch.eye(5))
    assert rk.SimpleRNNCell(3, 5, nonlinearity="relu", recurrent_init="orthogonal").weight_hh.detach().diagonal().ne(1).any()
    torch_like = rk.GRUCell(3, 5, input_init="torch", recurrent_init="torch")
    bound = 1 / 5 ** 0.5
    assert all(p.abs().max().item() <= bound for p in torch_like.parameters())
    assert torch.count_nonzero(torch_like.bias_ih).item() == 15


def test_layer_norm_parameters_start_as_identity():
    cell = rk.LSTMCell(3, 4, layer_norm=True)
    assert torch.equal(cell.ln_ih_weight.detach(), torch.ones(16))
    assert torch.equal(cell.ln_cell_bias.detach(), torch.zeros(4))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("hidden_size", 0, "hidden_size must be a positive integer, got 0"),
    ("recurrent_dropout", 1.0, "recurrent_dropout must be a probability in [0, 1), got 1.0"),
    ("zoneout", -0.1, "zoneout must be a probability"),
    ("recurrent_init", "he", "recurrent_init must be one of"),
])
def test_bad_cell_options_are_named(option, value, message):
    kwargs = {"input_size": 3, "hidden_size": 4, option: value}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        rk.GRUCell(**kwargs)


def test_bad_nonlinearity_is_named():
    with pytest.raises(ValueError, match="nonlinearity must be one of 'tanh', 'relu'; got 'sigmoid'"):
        rk.SimpleRNNCell(3, 4, nonlinearity="sigmoid")
