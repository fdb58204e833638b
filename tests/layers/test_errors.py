"""Bad input gets a clear error naming the argument, the value and what was expected."""

import re

import pytest
import torch

import rnnkit as rk


@pytest.fixture(params=["auto", "reference", "native", "fused"])
def lstm(request):
    """Every backend gets the same validation: it happens at the layer, before dispatch."""
    return rk.LSTM(4, 5, 2, bidirectional=True, backend=request.param)


def raises(error, message):
    return pytest.raises(error, match=re.escape(message))


def test_wrong_rank(lstm):
    with raises(ValueError, "x must be 3-D [B, T, I] (or 2-D [T, I] unbatched), got shape [2, 3, 4, 5]"):
        lstm(torch.randn(2, 3, 4, 5))


def test_wrong_feature_size(lstm):
    with raises(ValueError, "x must have input_size=4 features in its last dim, got shape [2, 3, 7]"):
        lstm(torch.randn(2, 3, 7))


def test_not_a_tensor(lstm):
    with raises(TypeError, "x must be a torch.Tensor or PackedSequence, got list"):
        lstm([[1.0, 2.0]])


def test_zero_steps(lstm):
    with raises(ValueError, "x must have at least one time step, got shape [2, 0, 4]"):
        lstm(torch.randn(2, 0, 4))


@pytest.mark.parametrize(("lengths", "error", "message"), [
    ([3, 4], ValueError, "lengths must be <= T=3, got max 4"),
    ([0, 2], ValueError, "lengths must be >= 1, got min 0"),
    ([3, 2, 1], ValueError, "lengths must have shape [B=2] (one length per sequence), got shape [3]"),
    (torch.tensor([2.0, 3.0]), TypeError,
     "lengths must hold integers, got a float32 tensor of shape [2] (dtype torch.float32)"),
    ([2.5, 3.0], TypeError, "lengths must hold integers, got [2.5, 3.0] (dtype torch.float32)"),
    ("ab", TypeError, "lengths must be a 1-D integer tensor or a list of ints, got 'ab'"),
    ([torch.ones(3, 3, dtype=torch.long)] * 2, TypeError,
     "lengths must be a 1-D integer tensor or a list of ints, got a list of 2 tensors"),
])
def test_bad_lengths(lstm, lengths, error, message):
    with raises(error, message):
        lstm(torch.randn(2, 3, 4), lengths=lengths)


def test_a_state_passed_where_torch_nn_takes_it_says_where_it_goes(lstm):
    """torch.nn's second argument is the initial state (hx), rnnkit's the lengths: the error says so, naming what
    it got by dtype and shape (not by its values)."""
    h = torch.zeros(1, 2, 5)
    with raises(TypeError, "lengths (the second argument) got a tuple of 2 tensors: rnnkit's layers take (x, "
                           "lengths=None, state=None), so initial states go in by name: layer(x, state=(h_0, c_0))"):
        lstm(torch.randn(2, 3, 4), (h, h))
    with raises(TypeError, "lengths (the second argument) got a float32 tensor of shape [1, 2, 5]: rnnkit's layers "
                           "take (x, lengths=None, state=None), so initial states go in by name: layer(x, state=h_0)"):
        rk.GRU(4, 5)(torch.randn(2, 3, 4), h)


def test_lengths_with_packed_sequence(lstm):
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(2, 3, 4), [3, 2], batch_first=True)
    with raises(ValueError, "lengths must be None when x is a PackedSequence"):
        lstm(packed, lengths=[3, 2])


def test_state_of_wrong_shape(lstm):
    h = torch.zeros(4, 2, 5)
    with raises(ValueError, "state h_0 must have shape [L*D, B, H] = [4, 2, 5], got [2, 2, 5]"):
        lstm(torch.randn(2, 3, 4), state=(torch.zeros(2, 2, 5), h))
    with raises(TypeError, "state must be a pair (h_0, c_0) of tensors for LSTM, got Tensor"):
        lstm(torch.randn(2, 3, 4), state=h)
    with raises(TypeError, "state must be one tensor h_0 for GRU, got tuple of 2"):
        rk.GRU(4, 5)(torch.randn(2, 3, 4), state=(h, h))


def test_state_dtype_mismatch(lstm):
    h = torch.zeros(4, 2, 5, dtype=torch.float64)
    with raises(TypeError, "state h_0 must match x's dtype and device (torch.float32, cpu), got (torch.float64, cpu)"):
        lstm(torch.randn(2, 3, 4), state=(h, h.float()))


def test_dtype_mismatch(lstm):
    with raises(TypeError, "x has dtype torch.float64 but the layer's parameters are torch.float32"):
        lstm(torch.randn(2, 3, 4, dtype=torch.float64))


def test_device_mismatch(lstm):
    x = torch.randn(2, 3, 4, device="meta")
    with raises(ValueError, "x is on meta but the layer's parameters are on cpu"):
        lstm(x)


def test_unknown_cell_name():
    with raises(ValueError, "cell must be one of 'rnn', 'simple', 'lstm', 'gru' or a RecurrentCell class; got 'tcn'"):
        rk.RNN(3, 4, cell="tcn")


def test_unknown_cell_option():
    with raises(TypeError, "GRUCell has no option 'peepholes'"):
        rk.GRU(3, 4, peepholes=True)


def test_unknown_backend():
    with raises(ValueError, "backend must be one of 'auto', 'reference', 'native', 'fused'"):
        rk.LSTM(3, 4, backend="cudnn")


@pytest.mark.parametrize(("layer", "message"), [
    (lambda: rk.LSTM(3, 4, layer_norm=True, backend="native"),
     "backend='native' cannot run layer_norm=True (torch.nn has no layer-norm cells)"),
    (lambda: rk.LSTM(3, 4, peepholes=True, backend="native"), "backend='native' cannot run peepholes=True"),
    (lambda: rk.GRU(3, 4, reset_after=False, backend="native"), "backend='native' cannot run reset_after=False"),
    (lambda: rk.GRU(3, 4, zoneout=0.1, backend="native"), "backend='native' cannot run zoneout=0.1"),
    (lambda: rk.SimpleRNN(3, 4, recurrent_dropout=0.2, backend="native"),
     "backend='native' cannot run recurrent_dropout=0.2 while training"),
])
def test_native_backend_names_what_it_cannot_do(layer, message):
    with raises(ValueError, message):
        layer()(torch.randn(2, 3, 3))


def test_recurrent_dropout_runs_natively_in_eval():
    layer = rk.SimpleRNN(3, 4, recurrent_dropout=0.2, backend="native").eval()
    reference = rk.SimpleRNN(3, 4, recurrent_dropout=0.2, backend="reference").eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 3)
    torch.testing.assert_close(layer(x)[0], reference(x)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
    ({"dropout": 1.5}, "dropout must be a probability in [0, 1), got 1.5"),
    ({"hidden_size": 2.5}, "hidden_size must be a positive integer, got 2.5"),
])
def test_bad_layer_arguments(kwargs, message):
    arguments = {"input_size": 3, "hidden_size": 4, **kwargs}
    with raises(ValueError, message):
        rk.GRU(**arguments)
