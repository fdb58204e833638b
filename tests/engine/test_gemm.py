"""The fused engine's all-steps products (rnnkit/engine/fused/gemm.py): equal to float64 products, and
routed to oneDNN only where it is fast."""

import pytest
import torch

from rnnkit.engine.fused import compiled, gemm


def _onednn_or_skip():
    if compiled.ops() is None or gemm._linear is None or not torch.backends.mkldnn.is_available():
        pytest.skip("needs the compiled loops and torch's oneDNN linear")


def test_weight_grad_equals_the_float64_product_on_either_route():
    _onednn_or_skip()
    torch.manual_seed(0)
    grad, inputs = torch.randn(3000, 96), torch.randn(3000, 40)
    truth = grad.double().t() @ inputs.double()
    for route in (0, None):  # every product through oneDNN, then none
        with compiled.onednn_gemms(route):
            got = gemm.weight_grad(grad, inputs)
        assert got.shape == (96, 40)
        torch.testing.assert_close(got.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())


def test_weight_grad_of_a_column_slice_stays_on_aten(monkeypatch):
    """A column slice of a wider gradient (the reset-before GRU's [N, 2H] of [N, 3H]) made oneDNN reorder
    its operand through a generic path: 1.7 s for a GRU training step that takes 15 ms. Only dense
    gradients may go to oneDNN."""
    _onednn_or_skip()
    calls = []
    real = gemm._linear
    monkeypatch.setattr(gemm, "_linear", lambda *args: calls.append(args) or real(*args))
    torch.manual_seed(0)
    grad, inputs = torch.randn(2048, 384), torch.randn(2048, 128)
    with compiled.onednn_gemms(0):
        full = gemm.weight_grad(grad, inputs)
        assert len(calls) == 1  # dense: through oneDNN
        part = gemm.weight_grad(grad[:, :256], inputs)
        assert len(calls) == 1  # the slice: not through oneDNN
    torch.testing.assert_close(part, full[:256], rtol=1e-4, atol=1e-3)
