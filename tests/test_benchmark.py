"""The benchmark compares like with like: every contender computes what the torch.nn baseline computes."""

import pytest
import torch

from rnnkit import benchmark
from tests.helpers import cuda


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_contenders_compute_the_same_function_as_torch_nn(cell):
    layers = benchmark.contenders(cell, 3, 4, reference=True, device="cpu")
    assert set(layers) == {"torch.nn", "control", "fused", "native", "auto", "reference"}
    x = torch.randn(2, 5, 3)
    expected = layers["torch.nn"](x)[0]
    for name, layer in layers.items():
        torch.testing.assert_close(layer(x)[0], expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "ln-lstm"])
def test_padded_contenders_compute_what_torch_nn_computes_on_the_packed_batch(cell):
    """A "pad" row's contenders: torch.nn on pack_padded_sequence (padded again), rnnkit with lengths=: the same
    outputs (zeros past each length) and final states, against torch.nn's layer called by hand."""
    lengths = benchmark.padded_lengths(4, 9)
    assert lengths.tolist() == [9, 7, 5, 3]
    layers = benchmark.contenders(cell, 3, 4, reference=True, device="cpu", lengths=lengths)
    x = torch.randn(4, 9, 3)
    base = layers["torch.nn"].layer
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
    out, state = base(packed)
    expected = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=9)[0]
    assert expected[3, 3:].abs().sum() == 0
    names = ("torch.nn", "control") if cell == "ln-lstm" else tuple(layers)  # (its own weights, layer norm)
    for name in names:
        got, got_state = layers[name](x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(got_state, state, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    if cell == "ln-lstm":
        for name in ("auto", "reference"):
            torch.testing.assert_close(layers[name](x)[0], layers["fused"](x)[0], atol=1e-5, rtol=1e-5)
        assert layers["fused"](x)[0][3, 3:].abs().sum() == 0


def test_padded_rows_are_timed_marked_and_explained():
    rows = benchmark.run_speed(("gru",), [], reference=False, budget_ms=1, padded_shapes=[(3, 4, 2, 3)])
    assert [(r.padded, r.mode, r.shape) for r in rows] == [(True, "forward", (3, 4, 2, 3)),
                                                           (True, "train", (3, 4, 2, 3))]
    assert all(set(r.ratios) == {"control", "fused", "native", "auto"} and r.torch_ms > 0 for r in rows)
    plain = benchmark.Row("gru", (1, 2, 3, 4), "train", 1.0, {"fused": 0.5})
    text = benchmark.markdown([plain, *rows], [], [], "header")
    # the plain table first, then the padded one under its note
    assert text.index("| gru | 1,2,3,4 | train |") < text.index(benchmark.PADDED_NOTE) < text.index("| gru | 3,4,2,3 |")
    assert benchmark.PADDED_NOTE not in benchmark.markdown([plain], [], [], "header")


def test_layer_norm_lstm_contenders_share_weights():
    layers = benchmark.contenders("ln-lstm", 3, 4, reference=True, device="cpu")
    assert set(layers) == {"torch.nn", "control", "fused", "auto", "reference"}
    for x in (torch.randn(2, 5, 3), torch.randn(2, 1, 3)):  # (auto trains a single step with the reference loop)
        for name in ("auto", "reference"):
            torch.testing.assert_close(layers[name](x)[0], layers["fused"](x)[0], atol=1e-5, rtol=1e-5)


def test_markdown_report_lists_every_ratio():
    rows = [benchmark.Row("gru", (1, 2, 3, 4), "train", 10.0, {"control": 1.0, "fused": 0.5})]
    text = benchmark.markdown(rows, [], [], "header")
    assert "| gru | 1,2,3,4 | train | 10.00 | 1.00x | 0.50x |" in text


def test_bench_command_says_which_loops_products_and_pool_it_measured(tmp_path):
    from typer.testing import CliRunner

    from rnnkit.cli import app
    from rnnkit.engine.fused import compiled

    report = tmp_path / "bench.md"
    result = CliRunner().invoke(app, ["bench", "--quick", "--cells", "rnn", "--markdown", str(report)],
                                env={"COLUMNS": "400", "RNNKIT_WORKSPACE_MB": "256", "MALLOC_TRIM_THRESHOLD_": "1234"})
    assert result.exit_code == 0, result.output
    header = report.read_text().splitlines()[0]
    status = compiled.status()
    assert ("compiled per-step loops" if status["in_use"] else "Python per-step loops") in header
    if status["in_use"]:
        threads = ("each batch split over" if status["batch_split"] else "steps split over")
        assert (threads if status["threaded"] else "single-threaded steps") in header
    assert ("through oneDNN" if status["onednn_min_macs"] is not None else "through ATen") in header
    assert "buffer pool up to 256 MiB" in header
    assert "allocator: MALLOC_TRIM_THRESHOLD_=1234" in header
    assert "| rnn |" in report.read_text()


def test_the_allocator_line_says_what_decides_page_faults(monkeypatch):
    for name in benchmark.ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(benchmark.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert benchmark.allocator_line().startswith("allocator: glibc's defaults (freed large blocks go back")
    monkeypatch.setattr(benchmark.platform, "libc_ver", lambda: ("", ""))
    assert benchmark.allocator_line() == "allocator: the platform's default"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1073741824")
    assert benchmark.allocator_line() == ("allocator: MALLOC_MMAP_THRESHOLD_=1073741824, "
                                          "LD_PRELOAD=/usr/lib/libjemalloc.so.2")


def test_markdown_memory_rows_give_both_ratios():
    memory = [{"cell": "gru", "T": 100, "torch.nn": 20.0, "fused": 25.0, "torch.nn steady": 20.0, "fused steady": 15.0}]
    text = benchmark.markdown([], [], memory, "header")
    assert "| gru | 100 | 20.0 | 25.0 | 1.25x | 20.0 | 15.0 | 0.75x |" in text


@pytest.mark.parametrize("steady", [False, True])
def test_training_memory_counts_at_least_the_buffers_a_step_must_touch(steady):
    # GRU (B, T, I, H) = (32, 50, 32, 128): the gate buffer alone is 1600 x 384 floats = 2.3 MiB, and its
    # gradient as much again; a measurement that missed the step (e.g. memory kept from the step before) reads ~0
    for backend in ("torch.nn", "fused"):
        assert benchmark.peak_training_memory("gru", backend, 50, steady=steady) > 4.0


def test_console_tables_keep_every_number_in_80_columns():
    import io

    from rich.console import Console

    console = Console(width=80, record=True, file=io.StringIO())
    rows = [benchmark.Row("ln-lstm", (256, 50, 64, 128), "forward", 250.32,
                          {"control": 1.0, "fused": 0.5, "native": 1.01, "auto": 1.0, "reference": 16.38}),
            benchmark.Row("ln-lstm", (256, 100, 64, 128), "train", 1250.32,
                          {"control": 1.0, "fused": 0.25, "reference": 12.38}, padded=True)]
    console.print(benchmark.speed_table(rows[:1]))
    console.print(benchmark.speed_table(rows[1:], benchmark.PADDED_TITLE))
    console.print(benchmark.memory_table([{"cell": "lstm", "T": 1600, "torch.nn": 394.7, "fused": 352.0,
                                           "torch.nn steady": 394.4, "fused steady": 350.9}]))
    text = console.export_text()
    for value in ("ln-lstm", "256,50,64,128", "250.32", "16.38x", "0.50x", "394.7", "350.9", "0.89x",
                  benchmark.PADDED_TITLE, "256,100,64,128", "1250.32", "12.38x"):
        assert value in text
    assert "…" not in text


@pytest.mark.parametrize("device, says", [("cuda", "no CUDA device is available here"), ("mps", "runs on cpu or cuda"),
                                          ("tpu:x", "is no device")])
def test_bench_names_a_device_it_cannot_use(device, says):
    from typer.testing import CliRunner

    from rnnkit.cli import app

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = CliRunner().invoke(app, ["bench", "--quick", "--device", device], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and says in result.output and "--device" in result.output, result.output


def test_speed_and_scaling_runs_put_every_contender_and_input_on_the_device():
    """On the meta device (no data: the times mean nothing), under a mode that rejects an operation mixing two
    devices: a contender or input left on the CPU would fail (tests/engine/test_devices.py)."""
    from tests.engine.test_devices import OneDevice

    with OneDevice():
        rows = benchmark.run_speed(("lstm", "ln-lstm"), [(2, 3, 3, 4)], reference=True, budget_ms=1, device="meta")
        scaling = benchmark.run_scaling(("gru",), (3, 6), batch=2, input_size=3, hidden=4, budget_ms=1,
                                        device="meta")
    assert [(r.cell, r.mode) for r in rows] == [("lstm", "forward"), ("lstm", "train"), ("ln-lstm", "forward"),
                                                ("ln-lstm", "train")]
    assert set(rows[0].ratios) == {"control", "fused", "native", "auto", "reference"}
    assert [r["T"] for r in scaling] == [3, 6]


@cuda
def test_gpu_training_memory_counts_the_step():
    # GRU (B, T, I, H) = (32, 50, 32, 128): the gate buffer alone is 1600 x 384 floats = 2.3 MiB
    for backend in ("torch.nn", "fused"):
        assert benchmark.peak_gpu_training_memory("gru", backend, 50) > 2.0


@cuda
def test_bench_runs_against_cudnn(tmp_path):
    from typer.testing import CliRunner

    from rnnkit.cli import app

    report = tmp_path / "bench.md"
    result = CliRunner().invoke(app, ["bench", "--quick", "--cells", "gru,lstm", "--device", "cuda",
                                      "--markdown", str(report)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "cuDNN" in report.read_text().splitlines()[0] and "| lstm |" in report.read_text()


def test_short_calls_are_timed_in_runs_and_reported_per_call(monkeypatch):
    """A generation step (~0.1 ms) is timed in runs of calls of at least MIN_TIMING_MS, and each median is per call."""
    assert benchmark.GENERATION_STEP in benchmark.SHAPES and benchmark.GENERATION_STEP in benchmark.QUICK_SHAPES
    assert benchmark.calls_per_timing(0.1) == 10
    assert benchmark.calls_per_timing(2.0) == 1
    assert benchmark.calls_per_timing(0.0) == 100

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x, None

    ticks = iter(range(1000))  # a clock that moves 6 ms a reading: every run of calls reads it twice
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(ticks) * 0.006)
    layers = {"a": Counting(), "b": Counting()}
    medians = benchmark.time_interleaved(layers, torch.randn(1, 1, 3), train=False, rounds=4, calls=3)
    assert [layer.calls for layer in layers.values()] == [1 + 4 * 3] * 2  # a warm-up call, then 4 runs of 3
    assert medians == pytest.approx({"a": 2.0, "b": 2.0})  # 6 ms a run of 3 calls: 2 ms a call
