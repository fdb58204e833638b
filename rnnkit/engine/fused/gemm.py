"""The fused engine's all-steps products on the CPU, through oneDNN where it is measured faster.

ATen's ``mm`` runs MKL, which on this AMD CPU uses its AVX2 code; torch's oneDNN linear
(``torch.ops.mkldnn._linear_pointwise``, AVX-512) was 1.4-2x faster for every all-steps shape measured
(``benchmarks/RESULTS.md``), e.g. the weight gradient ``G^T X`` for G ``[12800, 768]``, X ``[12800, 256]``:
17 ms against 27 ms. It takes float32 only, so float64 (and every product while the compiled loops or
oneDNN are off, see :func:`rnnkit.engine.fused.compiled.onednn_gemms`) stays on ATen.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.engine.fused import compiled, workspace

_linear = torch.ops.mkldnn._linear_pointwise if hasattr(torch.ops.mkldnn, "_linear_pointwise") else None


def through_onednn(a: Tensor, macs: int) -> bool:
    """Whether a product of ``macs`` multiply-adds with first operand ``a`` goes through oneDNN here."""
    least = compiled.onednn_min_macs()
    return least is not None and _linear is not None and a.dtype == torch.float32 and a.device.type == "cpu" \
        and macs >= least


#: the largest output (bytes) the input projection takes from oneDNN, which returns a fresh tensor: glibc hands
#: blocks up to 32 MiB out again from its heap once one was freed, larger ones are mapped and page-faulted in on
#: every call ([12800, 1024] floats, 52 MB: 24 ms through oneDNN against 17.7 ms for MKL into a kept buffer)
PROJECTION_MAX_BYTES = 32 << 20


def project(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x [N, I] @ weight^T [I, G] (+ bias)``: through oneDNN into a new tensor where it is faster (on a Zen 5
    0.51 against 1.02 ms for [3200, 32] x [32, 512], 4.2 against 8.7 ms for [12800, 64] x [64, 512]), else
    through ATen into a pooled ``[N, G]`` buffer."""
    rows, width = x.shape[0], weight.shape[0]
    if (through_onednn(x, rows * x.shape[1] * width) and x.is_contiguous() and weight.is_contiguous()
            and rows * width * x.element_size() <= PROJECTION_MAX_BYTES):
        return _linear(x, weight, bias, "none", [], "")
    out = workspace.empty((rows, width), x)
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def times_weight(grad: Tensor, weight: Tensor) -> Tensor:
    """``grad [N, K] @ weight [K, M]``."""
    if through_onednn(grad, grad.shape[0] * grad.shape[1] * weight.shape[1]):
        return _linear(grad, weight.t().contiguous(), None, "none", [], "")
    return grad @ weight


def weight_grad(grad: Tensor, inputs: Tensor) -> Tensor:
    """``grad^T @ inputs`` for ``grad [N, M]``, ``inputs [N, K]``: a sum over all N rows, ``[M, K]``."""
    return _weight_grad(grad, inputs, with_sum=False)[0]


def weight_grad_and_sum(grad: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`weight_grad` and ``grad``'s sum over the rows ``[M]`` (a bias's gradient): through oneDNN from the same
    product, a row of ones under ``inputs^T`` (no second pass over ``grad``), else ``grad.sum(0)``."""
    product, summed = _weight_grad(grad, inputs, with_sum=True)
    return product, grad.sum(0) if summed is None else summed


def _weight_grad(grad: Tensor, inputs: Tensor, with_sum: bool) -> tuple[Tensor, Tensor | None]:
    """``grad^T @ inputs`` and, when ``with_sum`` and the product goes through oneDNN, ``grad``'s row sum."""
    # grad's transposed view must be dense for oneDNN: a column slice (the GRU reset-before's [N, 2H] of
    # [N, 3H]) sends it down a generic reorder path, measured at 565 ms for a product MKL does in ~2 ms
    if grad.is_contiguous() and through_onednn(grad, grad.shape[0] * grad.shape[1] * inputs.shape[1]):
        # (inputs^T grad)^T, this order being oneDNN's fast one. oneDNN reads the second operand's transposed
        # view as it is, but makes the first contiguous in a fresh buffer, whose page faults cost more than
        # the product here (4 ms of 6 for [12800, 128] operands in a training step): it gets a pooled copy,
        # transposed by the compiled loops' kernel where it can be (torch's copy of the transposed view took
        # 1.1-3.8 ms for [12800, 128-256] floats on a Zen 5, the kernel 0.17-0.64 ms)
        k = inputs.shape[1]
        first = workspace.empty((k + 1 if with_sum else k, inputs.shape[0]), inputs)
        kernels = compiled.ops()
        if kernels is not None and inputs.stride(1) == 1:
            kernels.transpose_into(inputs, first[:k])
        else:
            first[:k].copy_(inputs.t())
        if with_sum:
            first[k].fill_(1.0)
        product = _linear(first, grad.t(), None, "none", [], "")
        return product[:k].t(), (product[k] if with_sum else None)
    return grad.t() @ inputs, None
