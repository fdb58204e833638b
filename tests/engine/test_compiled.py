"""The compiled per-step loops of the fused engine: built here, equal to the Python loops, and optional."""

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import rnnkit as rk
from rnnkit.engine.fused import compiled
from tests.helpers import CELL_OPTIONS, assert_close, make_cell, option_id, randomise


@pytest.mark.skipif(sys.platform != "linux" or shutil.which(os.environ.get("CXX", "c++")) is None,
                    reason="the compiled loops are built on Linux with a C++ compiler")
def test_compiled_loops_are_built_where_a_compiler_exists():
    status = compiled.status()
    assert status["in_use"], status["why_not"]
    assert os.path.exists(status["library"])


def _run(cell, x, lengths, noise):
    from rnnkit.engine import fused

    x = x.clone().requires_grad_()
    state = tuple(torch.linspace(-0.5, 0.5, x.shape[1] * cell.hidden_size, dtype=x.dtype)
                  .view(x.shape[1], -1).requires_grad_() for _ in range(cell.state_size))
    out, final = fused.run_direction(cell, x, state, lengths, True, noise)
    loss = (out * out.detach().cos()).sum() + sum((f * f.detach().sin()).sum() for f in final)
    return [out, *final, *torch.autograd.grad(loss, [x, *state, *cell.parameters()])]


def _noisy_case(case, dtype, lengths=(7, 3, 7, 1, 5, 6)):
    """A cell with every option of ``case`` plus recurrent dropout and zoneout, its input [T, B, 5] (B: one per
    length), lengths and noise."""
    name, options = case
    cell = make_cell(name, {**options, "recurrent_dropout": 0.2, "zoneout": 0.1}, input_size=5, hidden_size=24,
                     dtype=dtype)
    steps, batch = max(lengths), len(lengths)
    return (cell, torch.randn(steps, batch, 5, dtype=dtype), torch.tensor(lengths),
            cell.sample_noise(steps, batch))


@contextlib.contextmanager
def _gemms(route):
    """aten: every recurrent product through ATen's mm, of a whole step's rows as in the Python loops (no batch
    split: MKL may round a row differently in products of other sizes); onednn: every float32 one through
    oneDNN; packed: every float32 one from an MKL-packed weight (skips where this torch exports no packed GEMM;
    products of under 8 rows stay on ATen); panel: those from rnnkit's panels (float64 too; calls whose widest
    step has under 3 rows, or 64 or more, stay on ATen); small: those of batches under 16 through rnnkit's
    small-product kernel."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(compiled.onednn_gemms(0 if route == "onednn" else None))
        stack.enter_context(compiled.small_products(route == "small"))
        stack.enter_context(compiled.panel_gemms(route == "panel"))
        stack.enter_context(compiled.batch_split(route != "aten"))
        try:
            stack.enter_context(compiled.packed_gemms(route == "packed"))
        except RuntimeError:  # this torch has no packed GEMM: the products are ATen's anyway
            if route == "packed":
                pytest.skip("this torch exports no MKL packed GEMM")
        yield


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_compiled_loops_equal_the_python_loops(case, dtype):
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    cell, x, lengths, noise = _noisy_case(case, dtype)
    with _gemms("aten"):  # the same GEMMs as the Python loops: only the pointwise code differs
        fast = _run(cell, x, lengths, noise)
    with compiled.python_loops():
        slow = _run(cell, x, lengths, noise)
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # relative to each tensor's largest entry (relu grows)
    for a, b in zip(fast, slow):
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, atol=tol * scale, rtol=tol)


def test_compiled_loops_can_be_turned_off():
    """RNNKIT_COMPILED=0 in the environment (read once, on the first use) keeps the Python loops, and says so."""
    script = textwrap.dedent("""
        import torch, rnnkit as rk
        from rnnkit.engine.fused import compiled
        assert compiled.ops() is None
        assert compiled.status() == {"in_use": False, "library": None, "why_not": "turned off by RNNKIT_COMPILED=0",
                                     "onednn_min_macs": None, "threaded": False, "packed_gemm": False,
                                     "panel_gemm": False, "small_products": False, "batch_split": False,
                                     "reuse_saved": False, "prefetch": False, "paired_directions": False}, \
            compiled.status()
        layer = rk.GRU(3, 4, backend="fused")
        out, _ = layer(torch.randn(2, 5, 3))
        out.sum().backward()
        print(tuple(out.shape), compiled.status()["in_use"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RNNKIT_COMPILED": "0"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "(2, 5, 4) False"


def _float32_routes(case, routes, lengths=(7, 3, 7, 1, 5, 6)):
    """Each route's float32 results and their largest error relative to the float64 Python loops (the truth)."""
    cell64, x, lengths, noise = _noisy_case(case, torch.float64, lengths)
    cell32 = make_cell(case[0], {**case[1], "recurrent_dropout": 0.2, "zoneout": 0.1}, input_size=5,
                       hidden_size=24, dtype=torch.float32)
    cell32.load_state_dict({k: v.float() for k, v in cell64.state_dict().items()})
    noise32 = None if noise is None else type(noise)(
        None if noise.recurrent is None else noise.recurrent.float(),
        None if noise.zoneout is None else tuple(m.float() for m in noise.zoneout))
    with compiled.python_loops():
        truth = _run(cell64, x, lengths, noise)
    results, errors = {}, {}
    for route in routes:
        with _gemms(route):
            results[route] = _run(cell32, x.float(), lengths, noise32)
        errors[route] = max(((a.double() - b).abs().max() / b.abs().max()).item()
                            for a, b in zip(results[route], truth))
    return results, errors


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_float32_through_onednn_is_as_accurate_as_through_aten(case):
    """oneDNN sums in another order than MKL, so the float32 results differ by rounding, which the
    recurrence amplifies (most with relu). Both are held to the float64 Python loops, the ground truth."""
    if compiled.ops() is None or not torch.backends.mkldnn.is_available():
        pytest.skip("compiled loops or oneDNN unavailable")
    _, errors = _float32_routes(case, ("aten", "onednn"))
    assert errors["onednn"] <= max(2 * errors["aten"], 2e-6), errors
    assert errors["onednn"] < 1e-4, errors


@pytest.mark.parametrize("route", ["packed", "panel"])
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_float32_from_a_packed_weight_or_panels_is_as_accurate_as_through_aten(case, route):
    """MKL's packed products (cblas_sgemm_compute) and rnnkit's panel kernel sum in their own orders too; held to
    the float64 truth like oneDNN's, and they really run: their results and ATen's differ by rounding somewhere.
    Eighteen sequences: with the batch split over two threads each thread's products have half the rows, 8 or
    more in the first steps (products of fewer than 8 rows stay on ATen in the packed route, under 3 in the
    panel route)."""
    if compiled.ops() is None:
        pytest.skip("compiled loops unavailable")
    results, errors = _float32_routes(case, ("aten", route),
                                      lengths=(7, 3, 7, 1, 5, 6, 7, 7, 4, 6, 7, 2, 7, 6, 5, 7, 3, 7))
    assert errors[route] <= max(2 * errors["aten"], 2e-6), errors
    assert errors[route] < 1e-4, errors
    assert any(not torch.equal(a, b) for a, b in zip(results[route], results["aten"]))


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_float32_products_of_two_rows_go_through_the_panel_kernel(case):
    """A call of batch 2 (one thread, two rows a product) goes through the panel kernel on every CPU from a weight
    of up to 256 KiB (here 24 x 96 floats), instead of the small-product kernel or ATen: held to the float64 truth,
    and really run (results differ from ATen's)."""
    if compiled.ops() is None:
        pytest.skip("compiled loops unavailable")
    results, errors = _float32_routes(case, ("aten", "panel"), lengths=(7, 5))
    assert errors["panel"] <= max(2 * errors["aten"], 2e-6), errors
    assert any(not torch.equal(a, b) for a, b in zip(results["panel"], results["aten"]))


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_a_split_batch_of_four_runs_its_two_row_products_in_the_panel_kernel(case):
    """Batch 4 split over two threads gives each thread products of two rows, which the panel kernel takes (a
    product that runs on one thread, from any weight): the same results bit for bit as the unsplit call, whose
    four-row products it takes too (a row's sum does not depend on the other rows of its product)."""
    if compiled.ops() is None or not compiled.status()["threaded"] or torch.get_num_threads() < 2:
        pytest.skip("needs the compiled loops with two threads")
    cell, x, lengths, noise = _noisy_case(case, torch.float32, (7, 3, 6, 7))
    runs = []
    for split in (True, False):
        with _gemms("panel"), compiled.batch_split(split):
            runs.append(_run(cell, x, lengths, noise))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize(("rows", "k", "m"), [(1, 1, 1), (2, 9, 20), (5, 3, 17), (6, 64, 16), (7, 13, 40),
                                                (13, 130, 512), (16, 128, 512), (31, 70, 33), (70, 64, 70)])
def test_the_panel_kernel_multiplies_like_a_float64_matmul(rows, k, m, transposed, dtype):
    """x @ op(w) through the panel kernel (op(w) = w^T or w), into and added to a buffer with strided rows, against
    a float64 matmul; each row's result is the same bit for bit whatever other rows share its product (a row's
    sum does not depend on the height of its register block: the batch split relies on it)."""
    kernels = compiled.ops()
    if kernels is None:
        pytest.skip("compiled loops unavailable")
    generator = torch.Generator().manual_seed(rows * 1000 + k * 10 + m)
    x = torch.randn(rows, k + 3, dtype=dtype, generator=generator)[:, 2: k + 2]  # rows k + 3 apart
    w = torch.randn((m, k) if transposed else (k, m), dtype=dtype, generator=generator)
    truth = x.double() @ (w.double().t() if transposed else w.double())
    start = torch.randn(rows, m + 5, dtype=dtype, generator=generator)
    out = start.clone()
    kernels.panel_mm(x, w, transposed, out[:, 1: m + 1], False)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    scale = truth.abs().max().item() + 1
    torch.testing.assert_close(out[:, 1: m + 1].double(), truth, atol=tol * scale, rtol=tol)
    assert torch.equal(out[:, 0], start[:, 0]) and torch.equal(out[:, m + 1:], start[:, m + 1:])  # nothing else written
    added = start.clone()
    kernels.panel_mm(x, w, transposed, added[:, 1: m + 1], True)
    torch.testing.assert_close(added[:, 1: m + 1].double(), truth + start[:, 1: m + 1].double(), atol=tol * scale,
                               rtol=tol)
    for first, last in ((0, 1), (rows // 2, rows), (1, min(rows, 8))):
        if first < last:
            part = torch.empty(last - first, m, dtype=dtype)
            kernels.panel_mm(x[first:last], w, transposed, part, False)
            assert torch.equal(part, out[first:last, 1: m + 1])


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_float32_small_products_are_as_accurate_as_through_aten(case):
    """rnnkit's kernel for the products of small batches sums in its own order; held to the float64 truth like
    the BLAS routes, and it really runs (its results differ from ATen's by rounding somewhere)."""
    if compiled.ops() is None:
        pytest.skip("compiled loops unavailable")
    results, errors = _float32_routes(case, ("aten", "small"))
    assert errors["small"] <= max(2 * errors["aten"], 2e-6), errors
    assert errors["small"] < 1e-4, errors
    assert any(not torch.equal(a, b) for a, b in zip(results["small"], results["aten"]))


@pytest.mark.parametrize(("route", "lengths"), [
    ("small", (7, 3, 6, 1, 5)),  # steps of 5, 4, 4, 3, 3, 2 and 1 rows (the one-row blocks included)
    ("panel", (9, 3, 7, 1, 5, 6, 9, 7, 4, 6, 8, 2, 7, 6, 5, 9, 3, 7)),  # 9 + 9 rows down to a few a thread
    ("panel", tuple(1 + (7 * i) % 5 for i in range(150)))])  # 75 + 75 rows: over 63 a thread (AVX-512 CPUs)
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_float64_small_and_panel_products_equal_the_python_loops(case, route, lengths):
    """In float64 rnnkit's small-product and panel kernels give torch.mm's results (the Python loops') to
    rounding, at a hidden size that is no multiple of the vector width or of the kernels' blocks (13: every tail
    runs; every gate block ends mid-panel and the last panel is zero-padded), with steps of many row counts (the
    panel route's threads run register blocks of several heights: 9 rows 4 + 5, 7 rows 3 + 4, 6, 5, ...)."""
    if compiled.ops() is None:
        pytest.skip("compiled loops unavailable")
    name, options = case
    cell = make_cell(name, {**options, "recurrent_dropout": 0.2, "zoneout": 0.1}, input_size=5, hidden_size=13,
                     dtype=torch.float64)
    steps = max(lengths)
    x = torch.randn(steps, len(lengths), 5, dtype=torch.float64)
    noise = cell.sample_noise(steps, len(lengths))
    with _gemms(route):
        fast = _run(cell, x, torch.tensor(lengths), noise)
    with compiled.python_loops():
        slow = _run(cell, x, torch.tensor(lengths), noise)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-12 * b.abs().max().item(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_small_products_split_over_threads_give_the_same_results(cell, dtype):
    """From 32k multiply-adds a small product is split over threads by blocks of outputs; each output is summed
    the same way, so split and unsplit runs agree bit for bit (batch 2, hidden 128: 33k-131k per product)."""
    if not compiled.status()["threaded"]:
        pytest.skip("the compiled loops were built without OpenMP")
    torch.manual_seed(0)
    layer = rk.RNN(7, 128, cell=cell, backend="fused").to(dtype)
    x = torch.randn(2, 9, 7, dtype=dtype)
    runs = []
    for split in (1, None):
        layer.zero_grad()
        with compiled.step_threads(split), _gemms("small"):
            out, _ = layer(x)
            out.sin().sum().backward()
        runs.append([out.detach(), *(p.grad.clone() for p in layer.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize(("variable", "chooser", "on_avx512", "elsewhere"), [
    ("RNNKIT_ONEDNN", "_onednn_by_default", True, False), ("RNNKIT_PANEL_GEMM", "_panels_by_default", True, True)])
@pytest.mark.parametrize(("setting", "capability"), [
    (None, "AVX512"), (None, "AVX2"), (None, "DEFAULT"), ("0", "AVX512"), ("off", "AVX2"), ("no", "DEFAULT"),
    ("1", "AVX2"), ("on", "AVX512"), ("yes", "DEFAULT"), ("maybe", "AVX512"), ("maybe", "AVX2")])
def test_onednn_products_are_the_default_where_torch_runs_avx512_code_and_panels_everywhere(
        monkeypatch, variable, chooser, on_avx512, elsewhere, setting, capability):
    """Unset (or unreadable), the CPU decides: oneDNN where torch runs AVX-512 code (the only CPUs it was measured
    faster on), the panel kernel on every CPU (it beat the libraries on AVX2 and AVX-512 CPUs); 0/off/no and
    1/on/yes force either way."""
    if setting is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, setting)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    by_cpu = on_avx512 if capability.startswith("AVX512") else elsewhere
    expected = {"0": False, "off": False, "no": False, "1": True, "on": True, "yes": True}.get(setting, by_cpu)
    assert getattr(compiled, chooser)() is expected


def test_the_panel_kernel_is_as_wide_as_the_cpu_allows():
    """The loops are compiled for this CPU (-march=native): 512-bit vectors where it has AVX-512, taking a thread's
    products of 3 to 511 rows (of 1 and 2 too from weights of up to 256 KiB); 256-bit ones elsewhere, 3 to 63 rows
    (2 too from weights of up to 256 KiB, or where the product runs on one thread). Off, it reports nothing."""
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    with open("/proc/cpuinfo") as handle:
        wide = any(line.startswith("flags") and " avx512f " in f"{line.rstrip()} " for line in handle)
    with compiled.panel_gemms(True):
        assert compiled.panel_limits() == ((3, 512, 512, 256 << 10, 1) if wide else (3, 64, 256, 256 << 10, 2))
    with compiled.panel_gemms(False):
        assert compiled.panel_limits() is None


@pytest.mark.parametrize(("flags", "width"), [
    ("flags\t\t: fpu sse avx2 avx512f avx512bw\n", 512), ("flags\t\t: fpu avx avx2 fma\n", 256),
    ("flags\t\t: fpu avx2 avx512f\n", 512), ("flags\t\t: fpu avx2 avx512fp16x\n", 256), ("", 256)])
def test_the_pointwise_kernels_use_512_bit_vectors_where_the_cpu_has_avx512(monkeypatch, flags, width):
    monkeypatch.setattr(compiled, "_cpu_signature", lambda: flags)
    assert f"-mprefer-vector-width={width}" in compiled._pointwise_flags()
    assert "-march=native" in compiled._pointwise_flags()


def test_panel_products_are_on_by_default_and_can_be_turned_off_from_the_environment():
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    assert compiled.status()["panel_gemm"] is compiled._panels_by_default()
    with compiled.panel_gemms(True):
        assert compiled.status()["panel_gemm"]
    code = ("from rnnkit.engine.fused import compiled; import torch, rnnkit as rk;"
            "rk.GRU(3, 4, backend='fused')(torch.randn(20, 5, 3)); print(compiled.status()['panel_gemm'])")
    for setting, shown in (("0", "False"), ("1", "True")):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "RNNKIT_PANEL_GEMM": setting}, check=True)
        assert done.stdout.strip() == shown


def test_onednn_products_follow_the_cpu_from_the_documented_size_and_can_be_turned_off():
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    setting = os.environ.get("RNNKIT_ONEDNN")
    on = (setting == "1") if setting in ("0", "1") else torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    expected = compiled.ONEDNN_MIN_MACS if on else None
    assert compiled.status()["onednn_min_macs"] == expected
    with compiled.onednn_gemms(None):
        assert compiled.status()["onednn_min_macs"] is None
    with compiled.onednn_gemms(0):
        assert compiled.status()["onednn_min_macs"] == 0
    assert compiled.status()["onednn_min_macs"] == expected  # restored
    code = ("from rnnkit.engine.fused import compiled; import torch, rnnkit as rk;"
            "rk.GRU(3, 4, backend='fused')(torch.randn(2, 5, 3)); print(compiled.status()['onednn_min_macs'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RNNKIT_ONEDNN": "0"}, check=True)
    assert done.stdout.strip() == "None"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RNNKIT_ONEDNN": "1"}, check=True)
    assert done.stdout.strip() == str(compiled.ONEDNN_MIN_MACS)


def test_a_failing_compiler_falls_back_to_the_python_loops(tmp_path):
    """A machine whose compiler fails still trains, with the reason available from status()."""
    script = textwrap.dedent("""
        import torch, rnnkit as rk
        from rnnkit.engine.fused import compiled
        layer = rk.LSTM(3, 4, layer_norm=True, backend="fused")
        out, _ = layer(torch.randn(2, 5, 3))
        out.sum().backward()
        status = compiled.status()
        assert not status["in_use"] and "failed" in status["why_not"], status
        print("fell back:", status["why_not"].splitlines()[0])
    """)
    env = {**os.environ, "CXX": shutil.which("false") or "/bin/false", "RNNKIT_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fell back: building or loading the compiled loops failed" in done.stdout
    assert not list(tmp_path.rglob("*.so"))  # nothing half-built left under the final name


def test_layer_norm_gradients_do_not_depend_on_the_thread_count():
    """The input-side layer norm's backward splits rows over threads; the gain's gradient is summed in a
    fixed order, so results are bit-identical with 1 and 2 threads (seeded runs stay reproducible)."""
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    torch.manual_seed(0)
    layer = rk.LSTM(6, 32, layer_norm=True, backend="fused")
    x = torch.randn(16, 40, 6)
    threads = torch.get_num_threads()
    grads = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            layer.zero_grad()
            out, _ = layer(x)
            (out.sin()).sum().backward()
            grads.append([p.grad.clone() for p in layer.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_steps_split_over_threads_give_the_same_results(case, dtype):
    """Every step's pointwise work split over threads (down to single rows) gives bit-identical results with
    1 and 2 threads, and the same results as unsplit steps up to the order of the layer-norm gain sums.
    (float32 products go through oneDNN here: MKL's float32 GEMMs themselves differ by thread count. The
    batch split is off: it is tested below.)"""
    if not compiled.status()["threaded"]:
        pytest.skip("the compiled loops were built without OpenMP")
    if dtype == torch.float32 and not torch.backends.mkldnn.is_available():
        pytest.skip("needs oneDNN for thread-count independent float32 products")
    cell, x, lengths, noise = _noisy_case(case, dtype)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count, split in ((1, 1), (2, 1), (2, None)):
            torch.set_num_threads(count)
            with compiled.step_threads(split), _gemms("onednn"), compiled.batch_split(False):
                runs.append(_run(cell, x, lengths, noise))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    if not case[1].get("layer_norm"):
        assert all(torch.equal(a, b) for a, b in zip(runs[1], runs[2]))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(runs[1], runs[2]):
        torch.testing.assert_close(a, b, atol=tol * b.abs().max().item(), rtol=tol)


LSTM_CASES = [case for case in CELL_OPTIONS if case[0] == "lstm"]


@pytest.mark.parametrize("case", LSTM_CASES, ids=option_id)
def test_prefetching_the_next_steps_rows_changes_no_result(case):
    """The LSTM's training loops' prefetches (PREFETCH) are hints: with them and without, every output and
    gradient is the same bit for bit (16 sequences of mixed lengths: 8 rows a thread on two, fewer as they end)."""
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    cell, x, lengths, noise = _noisy_case(case, torch.float32, (9, 3, 9, 1, 5, 6, 9, 9, 4, 6, 9, 2, 9, 6, 5, 8))
    runs = []
    for on in (True, False):
        with compiled.prefetch_steps(on):
            assert compiled.status()["prefetch"] is on
            runs.append(_run(cell, x, lengths, noise))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CELL_OPTIONS, ids=option_id)
def test_the_batch_split_over_threads_gives_the_same_results(case, dtype):
    """A loop whose batch is split over threads (each thread all steps of its own rows) computes every row as
    an unsplit loop does, and backward loops sum the layer-norm gains' gradients by the same fixed chunks of the
    batch. With rnnkit's small-product and panel kernels, which sum each output the same way in products of any
    size, the results are the same bit for bit (small: six sequences, 3 + 3 rows; dropping a row from a chunk's
    sums fails the layer-norm cases; panel: eighteen sequences, 9 + 9 rows against 18); with MKL's packed weight
    or oneDNN (eighteen sequences, float32; oneDNN runs each thread's products on that thread) they agree to
    rounding."""
    if not compiled.status()["threaded"]:
        pytest.skip("the compiled loops were built without OpenMP")
    routes = ("small", "panel")
    if dtype == torch.float32:
        routes += ("packed", "onednn") if torch.backends.mkldnn.is_available() else ("packed",)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        kernels = compiled.ops()
        assert kernels.batch_threads(6) == 2 and kernels.batch_threads(3) == 1  # two rows a thread at least
        with compiled.batch_split(False):
            assert kernels.batch_threads(6) == 1
        for route in routes:
            lengths = ((7, 3, 7, 1, 5, 6) if route == "small"
                       else (7, 3, 7, 1, 5, 6, 7, 7, 4, 6, 7, 2, 7, 6, 5, 7, 3, 7))
            cell, x, lengths, noise = _noisy_case(case, dtype, lengths)
            runs = []
            for on in (True, False):
                with _gemms(route), compiled.batch_split(on):
                    runs.append(_run(cell, x, lengths, noise))
            if route in ("small", "panel"):
                assert all(torch.equal(a, b) for a, b in zip(*runs))
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            for a, b in zip(*runs):
                torch.testing.assert_close(a, b, atol=tol * b.abs().max().item(), rtol=tol)
    finally:
        torch.set_num_threads(threads)


class _CountingPairs:
    """The compiled loops' ops, recording every pair_loops call."""

    def __init__(self, real):
        self.real, self.pairs = real, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def pair_loops(self, count):
        self.pairs.append(count)
        return self.real.pair_loops(count)


def _bidirectional(name, options, dtype, backend="fused"):
    torch.manual_seed(0)
    layer = rk.RNN(5, 64, cell=name, bidirectional=True, backend=backend, zoneout=0.1, **options).to(dtype)
    return randomise(layer)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", [c for c in CELL_OPTIONS if c[0] in ("lstm", "gru")], ids=option_id)
def test_a_bidirectional_layers_two_inference_loops_run_at_once_and_compute_the_same(monkeypatch, case, dtype):
    """Without autograd, at batch x hidden up to 16k, the two directions' compiled loops run together, one thread
    each (loops.cpp's PAIRED DIRECTIONS): the same outputs and final states bit for bit as one after the other,
    with and without lengths, zoneout's masks included, and (float64) equal to the reference loop's."""
    if not compiled.status()["threaded"]:
        pytest.skip("the compiled loops were built without OpenMP")
    threads = torch.get_num_threads()
    counting = _CountingPairs(compiled.ops())
    monkeypatch.setattr(compiled, "ops", lambda: counting)
    name, options = case
    layer, reference = _bidirectional(name, options, dtype), _bidirectional(name, options, dtype, "reference")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 20, 5, dtype=dtype)  # 3 x 64 rows wide, 20 x 64 steps deep: paired
    try:
        torch.set_num_threads(2)
        for lengths in (None, torch.tensor([20, 7, 13])):
            runs = []
            for model, paired in ((layer, True), (layer, False), (reference, False)):
                counting.pairs.clear()
                torch.manual_seed(1)  # the same zoneout masks for every run
                with torch.no_grad(), compiled.paired_directions(paired):
                    out, final = model(x, lengths=lengths)
                assert counting.pairs == ([2, 0] if paired and model is layer else [])
                runs.append([out, *(final if isinstance(final, tuple) else (final,))])
            assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
            if dtype == torch.float64:  # (in float32 both engines' rounding grows over 20 steps of 64 units)
                for a, b in zip(runs[0], runs[2], strict=True):
                    assert_close(a, b, dtype=dtype)
        with torch.no_grad():  # not paired: past 16k wide, too short, a single thread, a batch that one direction
            # would split over more than two threads (6 rows on 4: 3 threads), or recorded for a backward
            for shape, threads_now in (((257, 20, 5), 2), ((3, 15, 5), 2), ((3, 20, 5), 1), ((6, 20, 5), 4)):
                torch.set_num_threads(threads_now)
                counting.pairs.clear()
                layer(torch.randn(*shape, dtype=dtype))
                assert counting.pairs == []
            torch.set_num_threads(4)  # 5 rows on 4 threads: 2 threads a direction alone, paired
            counting.pairs.clear()
            layer(torch.randn(5, 20, 5, dtype=dtype))
            assert counting.pairs == [2, 0]
        torch.set_num_threads(2)
        counting.pairs.clear()
        layer(x)
        assert counting.pairs == []
    finally:
        torch.set_num_threads(threads)


def test_an_error_between_two_paired_loops_runs_the_kept_one_and_ends_the_pairing(monkeypatch):
    """Should the second direction fail to start, the pairing ends (pair_loops(0), which runs a kept loop), so that
    the next loops run alone and right."""
    from rnnkit.engine import fused

    if not compiled.status()["threaded"]:
        pytest.skip("the compiled loops were built without OpenMP")
    threads = torch.get_num_threads()
    layer, reference = _bidirectional("lstm", {}, torch.float64), _bidirectional("lstm", {}, torch.float64, "reference")
    layer.eval(), reference.eval()
    reference.load_state_dict(layer.state_dict())
    start, started = fused._start, []

    def failing_second(*args):
        started.append(args)
        if len(started) == 2:
            raise RuntimeError("the second direction failed")
        return start(*args)

    x = torch.randn(2, 30, 5, dtype=torch.float64)
    counting = _CountingPairs(compiled.ops())
    monkeypatch.setattr(compiled, "ops", lambda: counting)
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            monkeypatch.setattr(fused, "_start", failing_second)
            with pytest.raises(RuntimeError, match="second direction failed"):
                layer(x)
            assert counting.pairs == [2, 0]  # the pairing ended
            monkeypatch.setattr(fused, "_start", start)
            single = rk.LSTM(5, 64, backend="fused").double()  # one direction: never paired
            single.load_state_dict({k: v for k, v in layer.state_dict().items() if "cells.0" in k})
            single_reference = rk.LSTM(5, 64, backend="reference").double()
            single_reference.load_state_dict(single.state_dict())
            assert_close(single(x)[0], single_reference(x)[0])
            assert_close(layer(x)[0], reference(x)[0])
            # pair_loops(0) runs a kept loop: a lone call after pair_loops(2) returns its buffers unwritten (its
            # outputs a view of them), pair_loops(0) then writes them
            fresh = torch.randn(2, 30, 5, dtype=torch.float64)
            counting.real.pair_loops(2)
            kept, _ = single(fresh)
            counting.real.pair_loops(0)
            assert_close(kept, single_reference(fresh)[0])
        with pytest.raises(RuntimeError, match="pair_loops takes 0 or 2"):
            counting.real.pair_loops(3)
    finally:
        torch.set_num_threads(threads)


def test_step_threads_restores_the_setting_and_needs_the_compiled_loops():
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    kernels = compiled.ops()
    with compiled.step_threads(None):
        assert kernels.set_parallel_min(-1) == -1
    assert kernels.set_parallel_min(compiled.PARALLEL_MIN) == compiled.PARALLEL_MIN  # back to the default
    with compiled.python_loops(), pytest.raises(RuntimeError, match="not in use"), compiled.step_threads(1):
        pass


@pytest.mark.skipif(sys.platform != "linux" or shutil.which(os.environ.get("CXX", "c++")) is None,
                    reason="the compiled loops are built on Linux with a C++ compiler")
@pytest.mark.parametrize("why", ["the OpenMP build fails", "torch runs another OpenMP runtime"])
def test_loops_are_built_single_threaded_where_openmp_cannot_be_used(tmp_path, why):
    """If the OpenMP build fails, or torch's OpenMP is not libgomp, the loops are built without OpenMP:
    in use, each step on one thread."""
    breaks = ('compiled._OPENMP_FLAGS = ["-fopenmp", "--no-such-option-for-rnnkit"]' if why.startswith("the")
              else "compiled._torch_runs_libgomp = lambda: False")
    script = textwrap.dedent(f"""
        import torch, rnnkit as rk
        from rnnkit.engine.fused import compiled
        {breaks}
        layer = rk.GRU(3, 4, backend="fused")
        out, _ = layer(torch.randn(2, 5, 3))
        out.sum().backward()
        status = compiled.status()
        assert status["in_use"] and not status["threaded"], status
        with compiled.step_threads(1):  # asking for split steps is harmless: there is no OpenMP
            layer(torch.randn(2, 5, 3))
        print("single-threaded loops in use")
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "RNNKIT_CACHE_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "single-threaded loops in use" in done.stdout


@pytest.mark.parametrize(("switch", "variable", "needs"), [
    ("packed_gemm", "RNNKIT_PACKED_GEMM", "packed_gemm"), ("batch_split", "RNNKIT_BATCH_SPLIT", "threaded"),
    ("small_products", "RNNKIT_SMALL_PRODUCTS", "in_use"), ("reuse_saved", "RNNKIT_REUSE_SAVED", "in_use"),
    ("prefetch", "RNNKIT_PREFETCH", "in_use"), ("paired_directions", "RNNKIT_PAIR_DIRECTIONS", "threaded")])
def test_a_switch_of_the_compiled_loops_can_be_turned_off_from_the_environment(switch, variable, needs):
    """On by default where the loops can use it; `variable=0` turns it off in a new process."""
    if not compiled.status()[needs]:
        pytest.skip(f"not available here: {compiled.status()}")
    assert compiled.status()[switch]
    code = ("from rnnkit.engine.fused import compiled; import torch, rnnkit as rk;"
            f"rk.GRU(3, 4, backend='fused')(torch.randn(8, 5, 3)); print(compiled.status()[{switch!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, variable: "0"}, check=True)
    assert done.stdout.strip() == "False"


def test_saved_buffers_are_reused_only_by_a_backward_that_frees_its_graph():
    if compiled.ops() is None:
        pytest.skip(f"compiled loops unavailable: {compiled.status()['why_not']}")
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            seen.append(compiled.may_reuse_saved())
            return grad * 2

    x = torch.randn(3, requires_grad=True)
    y = Probe.apply(x).sum()
    y.backward(retain_graph=True)  # kept: a second backward reads the saved buffers again
    y.backward()  # freed afterwards
    torch.autograd.grad(Probe.apply(x).sum(), x, create_graph=True)  # kept
    torch.autograd.grad(Probe.apply(x).sum(), x)
    with compiled.reuse_saved(False):
        Probe.apply(x).sum().backward()
    assert seen == [False, True, False, True, False]
    assert not compiled.may_reuse_saved()  # no backward running
    assert compiled.status()["reuse_saved"]
