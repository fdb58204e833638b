"""Layers under ``torch.autocast`` (mixed precision, the usual way to train on a GPU), checked on the CPU's
autocast with bfloat16, which casts the same way CUDA's does with float16.

Each backend takes its own route: torch.nn's kernels (native) cast as torch does for nn.LSTM/GRU/RNN, the
reference loop's operations are cast one by one, and the fused engine computes in its parameters' dtype with
autocast off (its Functions and compiled loops are written for one dtype), taking inputs in the autocast dtype
too, as an upstream autocast layer hands them over.
"""

import pytest
import torch

import rnnkit as rk
from tests.helpers import CELL_OPTIONS, native_can_run, option_id, randomise

NOISE = {"recurrent_dropout": 0.3, "zoneout": 0.1}  # 1 / 0.7 has no exact bfloat16


def _layer(name, options, backend, noise):
    torch.manual_seed(0)
    layer = rk.RNN(3, 4, cell=name, num_layers=2, bidirectional=True, backend=backend, **options,
                   **(NOISE if noise else {}))
    return randomise(layer)


def _train(layer, x, lengths, seed=1):
    torch.manual_seed(seed)  # the same dropout, recurrent-dropout and zoneout masks in every run
    x = x.clone().requires_grad_()
    out, final = layer(x, lengths=lengths)
    finals = final if isinstance(final, tuple) else (final,)
    loss = (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + sum(f.float().sum() for f in finals)
    grads = list(torch.autograd.grad(loss, [x, *layer.parameters()]))
    return out, finals, grads


RUNS = [pytest.param(backend, case, noise, id=f"{backend}-{option_id(case)}-{'noise' if noise else 'plain'}")
        for backend in ("fused", "auto", "reference", "native") for case in CELL_OPTIONS for noise in (False, True)
        if backend != "native" or (not noise and native_can_run(case[1]))]  # native: what torch.nn computes


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["float32-x", "bfloat16-x"])
@pytest.mark.parametrize("backend, case, noise", RUNS)
def test_every_backend_trains_under_autocast_close_to_float32(backend, case, noise, input_dtype):
    name, options = case
    layer = _layer(name, options, backend, noise)
    x = torch.randn(4, 5, 3).to(input_dtype)
    lengths = [5, 2, 4, 3]
    expected = _train(layer, x.float(), lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, finals, grads = _train(layer, x, lengths)
    if backend == "fused":  # computed in float32 as written, on the same (bfloat16-rounded) inputs: exactly,
        tol = dict(atol=0, rtol=0)  # x's gradient rounded to x's dtype
        expected[2][0] = expected[2][0].to(input_dtype)
    else:  # bfloat16 keeps 8 bits (~0.4% a rounding): outputs and states within 2% of the float32 ones in norm,
        tol = None  # gradients within 20% (measured up to 12%: through two layers of 4-wide layer norms, whose
        # backward divides by a 4-value standard deviation; a wrong or unscaled gradient is off by 100% or more)
    assert grads[0].dtype == input_dtype
    for what, ours, theirs in [("outputs", out, expected[0]), *zip(["final"] * 4, finals, expected[1]),
                               ("x's gradient", grads[0], expected[2][0]),
                               *zip(["a parameter's gradient"] * 99, grads[1:], expected[2][1:])]:
        assert ours.dtype.is_floating_point and torch.isfinite(ours).all(), what
        if tol is None:
            error = (ours.float() - theirs.float()).norm() / theirs.float().norm().clamp(min=1e-3)
            assert error < (0.2 if "gradient" in what else 0.02), f"{what}: relative error {error:.3f} in norm"
        else:
            torch.testing.assert_close(ours.float(), theirs.float(), **tol, msg=lambda m: f"{what}: {m}")
    assert all(g.dtype == p.dtype for g, p in zip(grads[1:], layer.parameters()))


def test_the_fused_engine_runs_in_the_parameters_dtype_under_autocast():
    layer = rk.GRU(3, 4, layer_norm=True, backend="fused")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, final = layer(torch.randn(2, 5, 3, dtype=torch.bfloat16))
    assert out.dtype == final.dtype == torch.float32


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_states_start_and_stay_in_the_parameters_dtype_under_autocast(backend):
    """Zero initial states (and noise masks) come in the parameters' dtype, not the input's: the recurrence
    carries float32 states through bfloat16 gates, as cuDNN keeps its cell state in float32."""
    layer = rk.LSTM(3, 4, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, (h, c) = layer(torch.randn(2, 5, 3, dtype=torch.bfloat16))
    assert h.dtype == c.dtype == torch.float32


def test_mixed_dtypes_outside_autocast_still_name_the_fix():
    layer = rk.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"x has dtype torch.bfloat16 but the layer's parameters are torch.float32"
                                        r".*torch.autocast"):
        layer(torch.randn(2, 5, 3, dtype=torch.bfloat16))
    state = (torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="state h_0 must match x's dtype"):
        layer(torch.randn(2, 5, 3), state=state)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 states with bfloat16 inputs: what autocast makes
        out, _ = layer(torch.randn(2, 5, 3, dtype=torch.bfloat16), state=tuple(s.float() for s in state))
    assert torch.isfinite(out).all()
