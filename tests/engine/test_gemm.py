"""The fused engine's all-steps products (rnnkit/engine/fused/gemm.py): equal to float64 products, and
routed to oneDNN only where it is fast."""

import pytest
import torch

from rnnkit.engine.fused import compiled, gemm


def _onednn_or_skip():
    if compiled.ops() is None or gemm._linear is None or not torch.backends.mkldnn.is_available():
        pytest.skip("needs the compiled loops and torch's oneDNN linear")


def test_weight_grad_equals_the_float64_product_on_either_route():
    """With grad's sum over the rows too (a bias's gradient): through oneDNN from the same product (a row of ones
    under the inputs), on ATen by a sum."""
    _onednn_or_skip()
    torch.manual_seed(0)
    grad, inputs = torch.randn(3000, 96), torch.randn(3000, 40)
    truth, sums = grad.double().t() @ inputs.double(), grad.double().sum(0)
    for route in (0, None):  # every product through oneDNN, then none
        with compiled.onednn_gemms(route):
            got = gemm.weight_grad(grad, inputs)
            both, summed = gemm.weight_grad_and_sum(grad, inputs)
        for product in (got, both):
            assert product.shape == (96, 40)
            torch.testing.assert_close(product.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())
        torch.testing.assert_close(summed.double(), sums, rtol=1e-5, atol=1e-5 * sums.abs().max().item())


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transpose_kernel_equals_torch_transpose(dtype):
    """The compiled loops' transpose (8 x 8 blocks in registers for float, panels of 64 rows) moves every
    element where ``.t()`` puts it: full and partial blocks and panels, offset and strided views."""
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    kernels = compiled.ops()
    torch.manual_seed(0)
    for rows, cols in [(1, 1), (8, 8), (7, 9), (64, 16), (130, 40), (3000, 37), (200, 128)]:
        source = torch.randn(rows + 2, cols + 3, dtype=dtype)[2:, 1:cols + 1]  # offset rows, row stride cols + 3
        into = torch.full((cols, rows + 5), float("nan"), dtype=dtype)
        kernels.transpose_into(source, into[:, 3:rows + 3])
        assert torch.equal(into[:, 3:rows + 3], source.t())
        assert into[:, :3].isnan().all() and into[:, rows + 3:].isnan().all()  # nothing written outside
    with pytest.raises(RuntimeError, match="dst must be src's transpose"):
        kernels.transpose_into(torch.zeros(4, 3, dtype=dtype), torch.zeros(4, 3, dtype=dtype))
    with pytest.raises(RuntimeError, match="unit column stride"):
        kernels.transpose_into(torch.zeros(3, 4, dtype=dtype).t(), torch.zeros(3, 4, dtype=dtype))


def test_weight_grad_transposes_a_strided_operand_correctly():
    """weight_grad's first operand for oneDNN is transposed by the compiled kernel when its rows are dense
    (a row block of the states buffer), by torch otherwise; both equal the float64 product."""
    _onednn_or_skip()
    torch.manual_seed(0)
    grad = torch.randn(1000, 96)
    states = torch.randn(1032, 40)
    for inputs in (states[32:], torch.randn(40, 1000).t()):  # dense rows; a transposed view (column stride 40)
        truth = grad.double().t() @ inputs.double()
        with compiled.onednn_gemms(0):
            got = gemm.weight_grad(grad, inputs)
        torch.testing.assert_close(got.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())


def test_the_input_projection_goes_through_onednn_below_the_output_limit(monkeypatch):
    """x W^T (+ b) through oneDNN (a new tensor) where it is on and the output fits PROJECTION_MAX_BYTES, else
    through ATen (into a pooled buffer); both equal the float64 product."""
    _onednn_or_skip()
    calls = []
    real = gemm._linear
    monkeypatch.setattr(gemm, "_linear", lambda *args: calls.append(args) or real(*args))
    torch.manual_seed(0)
    x, weight, bias = torch.randn(1000, 48), torch.randn(256, 48), torch.randn(256)
    for b in (None, bias):
        truth = x.double() @ weight.double().t() + (0 if b is None else b.double())
        for limit, minimum, through in ((1 << 30, 0, True), (1000 * 256 * 4 - 1, 0, False), (1 << 30, None, False)):
            monkeypatch.setattr(gemm, "PROJECTION_MAX_BYTES", limit)
            before = len(calls)
            with compiled.onednn_gemms(minimum):
                got = gemm.project(x, weight, b)
            assert (len(calls) > before) is through
            torch.testing.assert_close(got.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())
