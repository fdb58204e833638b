"""rnnkit layers with weights copied from torch.nn give torch.nn's outputs, states and gradients."""

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit as rk
from tests.helpers import assert_close

TORCH_LAYERS = {
    "lstm": lambda *a, **k: nn.LSTM(*a, **k),
    "gru": lambda *a, **k: nn.GRU(*a, **k),
    "rnn_tanh": lambda *a, **k: nn.RNN(*a, nonlinearity="tanh", **k),
    "rnn_relu": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k),
}
B, T, I, H = 3, 6, 4, 5
LENGTHS = [6, 2, 4]


def run_torch(module, x, lengths, state, batch_first):
    if lengths is None:
        return module(x, state)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out, final = module(packed, state)
    return pad_packed_sequence(out, batch_first=batch_first, total_length=T)[0], final


def flatten_state(state):
    return state if isinstance(state, tuple) else (state,)


def compare(kind, num_layers, bidirectional, with_lengths, with_state, batch_first, backend, dtype):
    theirs = TORCH_LAYERS[kind](I, H, num_layers, bidirectional=bidirectional, batch_first=batch_first).to(dtype)
    ours = rk.RNN.from_torch(theirs, backend=backend)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, dtype=dtype)
    lengths = LENGTHS if with_lengths else None
    rows = num_layers * (2 if bidirectional else 1)
    state = None
    if with_state:
        state = tuple(torch.randn(rows, B, H, dtype=dtype) for _ in range(2 if kind == "lstm" else 1))
        state = state if kind == "lstm" else state[0]

    results = []
    for module in (ours, theirs):
        x_leaf = x.clone().requires_grad_()
        state_leaf = None if state is None else tuple(s.clone().requires_grad_() for s in flatten_state(state))
        call_state = None if state_leaf is None else (state_leaf if kind == "lstm" else state_leaf[0])
        if module is ours:
            out, final = module(x_leaf, lengths=lengths, state=call_state)
        else:
            out, final = run_torch(module, x_leaf, lengths, call_state, batch_first)
        gen = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=gen, dtype=dtype)).sum()
        for f in flatten_state(final):
            loss = loss + (f * torch.randn(f.shape, generator=gen, dtype=dtype)).sum()
        loss.backward()
        grads = [x_leaf.grad] + ([s.grad for s in state_leaf] if state_leaf else [])
        results.append((out, flatten_state(final), grads))

    (out_a, fin_a, grads_a), (out_b, fin_b, grads_b) = results
    assert_close(out_a, out_b, dtype, "outputs")
    for a, b in zip(fin_a, fin_b):
        assert_close(a, b, dtype, "final state")
    for a, b in zip(grads_a, grads_b):
        assert_close(a, b, dtype, "input/state gradient")
    ours_grads = {}
    for index, cell in enumerate(ours.cells):
        layer, direction = divmod(index, ours.num_directions)
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            ours_grads[name + suffix] = getattr(cell, name).grad
    for name, param in theirs.named_parameters():
        assert_close(ours_grads[name], param.grad, dtype, f"gradient of {name}")


MATRIX = list(itertools.product(
    TORCH_LAYERS, [1, 2, 3], [False, True], [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("backend", ["reference", "native", "fused"])
@pytest.mark.parametrize(("kind", "layers", "bidirectional", "lengths", "state", "batch_first"), MATRIX)
def test_matches_torch_nn_float64(kind, layers, bidirectional, lengths, state, batch_first, backend):
    compare(kind, layers, bidirectional, lengths, state, batch_first, backend, torch.float64)


@pytest.mark.parametrize("kind", list(TORCH_LAYERS))
@pytest.mark.parametrize("backend", ["reference", "native", "fused"])
def test_matches_torch_nn_float32(kind, backend):
    compare(kind, 2, True, True, True, True, backend, torch.float32)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_packed_sequence_in_gives_packed_sequence_out(kind):
    theirs = TORCH_LAYERS[kind](I, H, 2, bidirectional=True, batch_first=True).double()
    ours = rk.RNN.from_torch(theirs, backend="reference")
    x = torch.randn(B, T, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    out_ours, final_ours = ours(packed)
    out_theirs, final_theirs = theirs(packed)
    assert isinstance(out_ours, nn.utils.rnn.PackedSequence)
    assert_close(out_ours.data, out_theirs.data)
    assert torch.equal(out_ours.batch_sizes, out_theirs.batch_sizes)
    assert torch.equal(out_ours.sorted_indices, out_theirs.sorted_indices)
    for a, b in zip(flatten_state(final_ours), flatten_state(final_theirs)):
        assert_close(a, b)


def test_unbatched_input_matches_torch_nn():
    theirs = nn.GRU(I, H, 2, bidirectional=True).double()
    ours = rk.RNN.from_torch(theirs)
    x = torch.randn(T, I, dtype=torch.float64)
    h0 = torch.randn(4, H, dtype=torch.float64)
    out_ours, h_ours = ours(x, state=h0)
    out_theirs, h_theirs = theirs(x, h0)
    assert out_ours.shape == (T, 2 * H) and h_ours.shape == (4, H)
    assert_close(out_ours, out_theirs)
    assert_close(h_ours, h_theirs)


@pytest.mark.parametrize("kind", list(TORCH_LAYERS))
def test_to_torch_round_trip_is_exact(kind):
    cell = "lstm" if kind == "lstm" else "gru" if kind == "gru" else "rnn"
    options = {"nonlinearity": kind[4:]} if cell == "rnn" else {}
    ours = rk.RNN(I, H, 2, cell=cell, bidirectional=True, batch_first=False, dropout=0.25, **options).double()
    theirs = ours.to_torch()
    assert type(theirs) is type(TORCH_LAYERS[kind](1, 1))
    assert (theirs.num_layers, theirs.bidirectional, theirs.batch_first, theirs.dropout) == (2, True, False, 0.25)
    back = rk.RNN.from_torch(theirs)
    for a, b in zip(ours.parameters(), back.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(T, B, I, dtype=torch.float64)
    ours.eval(), theirs.eval()
    assert_close(ours(x)[0], theirs(x)[0])


def test_to_torch_refuses_what_torch_cannot_express():
    with pytest.raises(ValueError, match="to_torch cannot express layer_norm=True"):
        rk.LSTM(3, 4, layer_norm=True).to_torch()
    with pytest.raises(ValueError, match="reset_after=False"):
        rk.GRU(3, 4, reset_after=False).to_torch()


def test_from_torch_checks_the_kind():
    with pytest.raises(TypeError, match="LSTM.from_torch needs a module of its own kind, got GRU"):
        rk.LSTM.from_torch(nn.GRU(3, 4))
    with pytest.raises(ValueError, match="proj_size=2"):
        rk.RNN.from_torch(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError, match="module must be a torch.nn.LSTM, GRU or RNN, got Linear"):
        rk.RNN.from_torch(nn.Linear(3, 4))
    assert isinstance(rk.RNN.from_torch(nn.RNN(3, 4, nonlinearity="relu")), rk.SimpleRNN)
