"""Gradient flow through time against independent references."""

import pytest
import torch
from torch import nn

import rnnkit as rk
from rnnkit.diagnostics import gradient_flow


class LastStep(nn.Module):
    def __init__(self, layer, hidden):
        super().__init__()
        self.rnn, self.head = layer, nn.Linear(hidden, 1)

    def forward(self, x, lengths=None):
        out, _ = self.rnn(x, lengths=lengths)
        return self.head(out[:, -1])


def test_step_norms_equal_a_hand_unrolled_loop_with_retain_grad():
    torch.manual_seed(0)
    model = LastStep(rk.GRU(3, 5, 2), 5).double()
    x, y = torch.randn(4, 7, 3, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    flow = gradient_flow(model, x, y, nn.functional.mse_loss)

    # independent: step the cells by hand, keep every h_t's gradient with retain_grad
    states = []
    inputs = x.transpose(0, 1)
    for layer in range(2):
        cell = model.rnn.cell(layer)
        h = (torch.zeros(4, 5, dtype=torch.float64),)
        outputs = []
        for t in range(7):
            _, h = cell(inputs[t], h)
            h[0].retain_grad()
            states.append((layer, t, h[0]))
            outputs.append(h[0])
        inputs = torch.stack(outputs)
    loss = nn.functional.mse_loss(model.head(inputs[-1]), y)
    loss.backward()
    for layer, t, h in states:
        expected = h.grad.norm().item()
        assert flow.step_norms[f"rnn/l{layer}/forward"][t].item() == pytest.approx(expected, rel=1e-10, abs=1e-14)
    for name, param in model.named_parameters():
        assert flow.parameter_norms[name] == pytest.approx(param.grad.norm().item(), rel=1e-10)
    assert flow.loss == pytest.approx(loss.item())


def test_step_norms_follow_the_closed_form_of_a_linear_rnn():
    """relu with positive weights and inputs is linear: dL/dh_t = (W^T)^(T-1-t) c for L = c . h_T."""
    layer = rk.SimpleRNN(2, 3, nonlinearity="relu", bias=False).double()
    with torch.no_grad():
        layer.cell(0).weight_ih.copy_(torch.rand(3, 2) + 0.1)
        layer.cell(0).weight_hh.copy_(torch.rand(3, 3) * 0.5)
    c = torch.tensor([[0.3, -0.7, 1.1]], dtype=torch.float64)
    x = torch.rand(1, 6, 2, dtype=torch.float64)
    model = nn.Sequential()
    model.rnn = layer

    def loss(prediction, _):
        return (prediction[0][:, -1] * c).sum()

    flow = gradient_flow(model, x, None, loss)
    W = layer.cell(0).weight_hh.detach()
    for t in range(6):
        expected = (torch.linalg.matrix_power(W.T, 5 - t) @ c.T).norm().item()
        assert flow.step_norms["rnn/l0/forward"][t].item() == pytest.approx(expected, rel=1e-10)


def test_padding_steps_get_no_gradient_and_directions_are_separate():
    torch.manual_seed(1)

    class AllSteps(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rk.LSTM(2, 3, bidirectional=True)

        def forward(self, x, lengths):
            return self.rnn(x, lengths=lengths)[0]

    model = AllSteps().double()
    x = torch.randn(2, 5, 2, dtype=torch.float64)

    def loss(prediction, _):
        return prediction.pow(2).sum()  # every output step counts

    flow = gradient_flow(model, x, None, loss, lengths=[3, 3])  # steps 3 and 4 are padding for both
    assert set(flow.step_norms) == {"rnn/l0/forward", "rnn/l0/reverse"}
    for norms in flow.step_norms.values():
        assert bool((norms[:3] > 0).all())
        assert norms[3:].tolist() == [0.0, 0.0]


def test_spectral_statistics_of_recurrent_blocks():
    layer = rk.LSTM(2, 4)
    model = nn.Sequential()
    model.rnn = layer
    with torch.no_grad():
        layer.cell(0).weight_hh.copy_(torch.cat([k * torch.eye(4) for k in (0.5, 1.0, 2.0, -3.0)]))
    from rnnkit.diagnostics import recurrent_weight_stats

    stats = recurrent_weight_stats(model)
    assert stats["rnn.cells.0/i"] == pytest.approx((0.5, 0.5))
    assert stats["rnn.cells.0/o"] == pytest.approx((3.0, 3.0))
    assert set(stats) == {f"rnn.cells.0/{g}" for g in "ifgo"}


def test_models_without_recurrent_layers_are_refused():
    with pytest.raises(ValueError, match="contains no rnnkit recurrent layer"):
        gradient_flow(nn.Linear(2, 1), torch.randn(3, 2), torch.randn(3, 1), nn.functional.mse_loss)


def test_gradient_flow_leaves_grads_and_backend_alone():
    model = LastStep(rk.GRU(2, 3, backend="fused"), 3)
    gradient_flow(model, torch.randn(2, 4, 2), torch.randn(2, 1), nn.functional.mse_loss)
    assert all(p.grad is None for p in model.parameters())
    assert model.rnn.step_observer is None and model.rnn.backend == "fused"
