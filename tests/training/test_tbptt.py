import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import rnnkit as rk
from rnnkit.tasks.trainer import fit_module
from rnnkit.training.tbptt import StatefulRegressor, TBPTTModule, detach_state, time_chunks


def test_chunked_forward_with_carried_state_equals_the_whole_sequence():
    torch.manual_seed(0)
    network = StatefulRegressor(rk.LSTM(3, 5, 2), 1).double()
    x = torch.randn(2, 23, 3, dtype=torch.float64)
    whole, (h, c) = network(x)
    state, pieces = None, []
    for chunk in time_chunks(x, 5):
        out, state = network(chunk, state)
        pieces.append(out)
        state = detach_state(state)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(state[0], h.detach(), atol=1e-12, rtol=1e-12)
    assert [c.shape[1] for c in time_chunks(x, 5)] == [5, 5, 5, 5, 3]


def test_no_gradient_crosses_a_chunk_boundary():
    torch.manual_seed(0)
    network = StatefulRegressor(rk.GRU(2, 4), 1)
    x = torch.randn(1, 10, 2, requires_grad=True)
    first, second = time_chunks(x, 5)
    _, state = network(first)
    out, _ = network(second, detach_state(state))
    out.sum().backward()
    assert torch.count_nonzero(x.grad[:, :5]) == 0  # the first chunk gets nothing from the second's loss
    assert torch.count_nonzero(x.grad[:, 5:]) > 0


def test_tbptt_training_learns_a_long_sine_with_bounded_chunks():
    torch.manual_seed(0)
    t = torch.arange(2001, dtype=torch.float32)
    series = torch.sin(2 * math.pi * t / 50)[None, :, None]  # one sequence of 2000 steps
    data = TensorDataset(series[:, :-1], series[:, 1:])  # predict the next value at every step
    network = StatefulRegressor(rk.GRU(1, 16), 1)
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(network(series[:, :-1])[0], series[:, 1:]).item()
    module = TBPTTModule(network, k=50, learning_rate=1e-2)
    fit_module(module, DataLoader(data, batch_size=1), None, epochs=3, gradient_clip=None, progress=False)
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(network(series[:, :-1])[0], series[:, 1:]).item()
    assert after < 0.05 * before


def test_bad_chunk_length():
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        time_chunks(torch.zeros(1, 3, 1), 0)
