"""Layer behaviour that torch.nn cannot check: dropout between layers, options reaching every cell."""

import pytest
import torch

import rnnkit as rk
from tests.helpers import assert_close


def test_interlayer_dropout_masks_are_the_same_for_every_backend():
    native = rk.GRU(3, 4, 3, dropout=0.5, backend="native").double()
    reference = rk.GRU(3, 4, 3, dropout=0.5, backend="reference").double()
    reference.load_state_dict(native.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.manual_seed(7)
    out_n, _ = native(x)
    torch.manual_seed(7)
    out_r, _ = reference(x)
    assert_close(out_n, out_r)
    torch.manual_seed(8)
    assert not torch.allclose(native(x)[0], out_n)  # dropout is really on while training
    native.eval()
    assert torch.equal(native(x)[0], native(x)[0])


@pytest.mark.parametrize(("onednn", "hidden", "expected"), [
    (None, 64, 16), (None, 65, 32), (None, 512, 32), (1 << 21, 64, 64), (1 << 21, 512, 64)])
def test_lstm_training_moves_to_the_fused_engine_from_the_measured_batch(monkeypatch, onednn, hidden, expected):
    """Where the compiled loops' products go through MKL (AVX2 CPUs): from batch 32, or 16 for hidden sizes up
    to 64; where they go through oneDNN (AVX-512): from batch 64."""
    from rnnkit.engine import dispatch

    monkeypatch.setattr(dispatch.fused_compiled, "onednn_min_macs", lambda: onednn)
    assert dispatch.lstm_fused_min_batch(hidden) == expected


def test_cell_options_reach_every_cell_and_layer_sizes_chain():
    layer = rk.LSTM(3, 4, 3, bidirectional=True, layer_norm=True, peepholes=True, zoneout=0.1)
    assert len(layer.cells) == 6
    assert all(c.layer_norm and c.peepholes and c.zoneout == 0.1 for c in layer.cells)
    assert [c.input_size for c in layer.cells] == [3, 3, 8, 8, 8, 8]
    assert layer.cell(2, 1) is layer.cells[5]


def test_auto_backend_picks_native_where_exact_and_fastest_else_fused():
    from rnnkit.engine import choose_backend

    x = torch.randn(2, 3, 3)
    assert choose_backend(rk.GRU(3, 4).cells, [None], x) == "fused"  # training GRU: fused
    assert choose_backend(rk.SimpleRNN(3, 4).cells, [None], x) == "fused"
    assert choose_backend(rk.LSTM(3, 4).cells, [None], x) == "native"  # oneDNN's LSTM for small batches
    from rnnkit.engine.dispatch import lstm_fused_min_batch
    from rnnkit.engine.fused import compiled

    big = torch.randn(2, lstm_fused_min_batch(4), 3)
    assert choose_backend(rk.LSTM(3, 4).cells, [None], big[:, 1:]) == "native"
    expected = "fused" if compiled.ops() is not None else "native"  # the compiled loops' LSTM for large ones
    assert choose_backend(rk.LSTM(3, 4).cells, [None], big) == expected
    assert choose_backend(rk.LSTM(3, 4).cells, [None], big.double()) == "native"
    with compiled.python_loops():
        assert choose_backend(rk.LSTM(3, 4).cells, [None], big) == "native"
    with torch.no_grad():
        assert choose_backend(rk.LSTM(3, 4).cells, [None], big) == "native"  # inference
    with torch.no_grad():  # GRU/SimpleRNN inference: the compiled loops beat torch.nn's per-step loop
        assert choose_backend(rk.GRU(3, 4).cells, [None], x) == expected
        assert choose_backend(rk.SimpleRNN(3, 4).cells, [None], x.double()) == expected
        with compiled.python_loops():
            assert choose_backend(rk.GRU(3, 4).cells, [None], x) == "native"
    assert choose_backend(rk.GRU(3, 4, layer_norm=True).cells, [None], x) == "fused"
    assert choose_backend(rk.LSTM(3, 4, peepholes=True).cells, [None], x) == "fused"
    dropout = rk.LSTM(3, 4, recurrent_dropout=0.3)
    assert choose_backend(dropout.cells, [dropout.cells[0].sample_noise(2, 2)], x) == "fused"
    dropout.eval()
    assert choose_backend(dropout.cells, [dropout.cells[0].sample_noise(2, 2)], x) == "native"

    class MyCell(rk.GRUCell):
        pass

    assert choose_backend(rk.RNN(3, 4, cell=MyCell, layer_norm=True).cells, [None], x) == "reference"
