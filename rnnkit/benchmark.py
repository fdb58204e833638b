"""rnnkit vs torch.nn, measured in the same run (``rnnkit bench``, ``benchmarks/bench_rnn.py``).

Method (../shared/PERF_NOTES.md): contenders are interleaved round by round in a rotating order,
each time is the median over rounds, and a second torch.nn layer with the same weights is timed as a
control whose ratio should read 1.00x; ratios from the same run are the only numbers that mean
anything on a shared machine. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import rnnkit as rk

#: one step of one sequence a call: what a generation loop (``LanguageModel.generate``) costs a token, where the
#: per-call overhead of the layer and its engine, not the steps, is the time
GENERATION_STEP = (1, 1, 32, 128)
SHAPES = [(32, 100, 32, 128), (64, 200, 64, 256), (16, 1000, 16, 64), (1, 100, 32, 128), (256, 50, 64, 128),
          GENERATION_STEP]
QUICK_SHAPES = [(32, 100, 32, 128), (1, 100, 32, 128), GENERATION_STEP]
#: shapes also timed as a padded batch (lengths spread from a third of T to T, :func:`padded_lengths`): torch.nn on
#: the ``PackedSequence`` its user builds (``pack_padded_sequence``), rnnkit with ``lengths=``
PADDED_SHAPES = [(32, 100, 32, 128)]
#: each timing takes at least this long: short calls (a generation step, ~0.05-0.3 ms) are timed in runs of
#: several, so that the clock's and the loop's own costs do not count
MIN_TIMING_MS = 1.0
CELLS = ("rnn", "gru", "lstm", "ln-lstm")
TORCH_CLASSES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM, "ln-lstm": nn.LSTM}
SCALING_STEPS = (50, 100, 200, 400, 800, 1600)


@dataclass
class Row:
    cell: str
    shape: tuple[int, int, int, int]
    mode: str  # "forward" (no grad) or "train" (forward + backward)
    torch_ms: float
    ratios: dict[str, float] = field(default_factory=dict)  # contender -> median / torch.nn median
    padded: bool = False  # a padded batch (lengths from T/3 to T): reported in a table of its own


def padded_lengths(batch: int, steps: int) -> torch.Tensor:
    """A padded batch's lengths ``[B]`` on the CPU: evenly spread from ``steps`` down to a third of it, the
    longest first (a batch of sequences of mixed lengths, as a classifier's are)."""
    return torch.linspace(steps, max(1, steps // 3), batch).round().long()


class Padded(nn.Module):
    """A layer called on a padded batch ``x [B, T, I]`` of ``lengths``: rnnkit's with ``lengths=``, torch.nn's on
    the ``PackedSequence`` a torch.nn user builds, its output padded again (zeros past each length)."""

    def __init__(self, layer: nn.Module, lengths: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.lengths = layer, lengths

    def forward(self, x: torch.Tensor):
        if not isinstance(self.layer, nn.RNNBase):
            return self.layer(x, lengths=self.lengths)
        packed = nn.utils.rnn.pack_padded_sequence(x, self.lengths, batch_first=True, enforce_sorted=False)
        out, state = self.layer(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], state


def contenders(cell: str, input_size: int, hidden: int, reference: bool, device,
               lengths: torch.Tensor | None = None) -> dict[str, nn.Module]:
    """torch.nn baseline and control, and the rnnkit layers to compare (same weights where comparable); each
    called on a padded batch of ``lengths`` (:class:`Padded`) when they are given."""
    layers = _contenders(cell, input_size, hidden, reference, device)
    return layers if lengths is None else {name: Padded(layer, lengths) for name, layer in layers.items()}


def _contenders(cell: str, input_size: int, hidden: int, reference: bool, device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = TORCH_CLASSES[cell](input_size, hidden, batch_first=True).to(device)
    control = TORCH_CLASSES[cell](input_size, hidden, batch_first=True).to(device)
    control.load_state_dict(base.state_dict())
    layers: dict[str, nn.Module] = {"torch.nn": base, "control": control}
    if cell == "ln-lstm":  # its own weights (torch.nn has no layer norm), shared by rnnkit's contenders
        layers["fused"] = rk.LSTM(input_size, hidden, layer_norm=True, backend="fused").to(device)
        for backend in ("auto",) + (("reference",) if reference else ()):
            layers[backend] = rk.LSTM(input_size, hidden, layer_norm=True, backend=backend).to(device)
            layers[backend].load_state_dict(layers["fused"].state_dict())
        return layers
    for backend in ("fused", "native", "auto") + (("reference",) if reference else ()):
        layers[backend] = rk.RNN.from_torch(base, backend=backend)
    return layers


def _call(layer: nn.Module, x: torch.Tensor, train: bool) -> None:
    if train:
        out = layer(x)[0]
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            layer(x)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(layers: dict[str, nn.Module], x: torch.Tensor, train: bool, rounds: int,
                     calls: int = 1) -> dict[str, float]:
    """Median milliseconds a call per contender, interleaved and in rotating order; each timing covers ``calls``
    calls in a row."""
    names = list(layers)
    for name in names:  # warm-up
        _call(layers[name], x, train)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            layer = layers[name]
            layer.zero_grad(set_to_none=True)
            x.grad = None
            _sync(x.device)
            start = time.perf_counter()
            for _ in range(calls):
                _call(layer, x, train)
            _sync(x.device)
            times[name].append((time.perf_counter() - start) * 1e3 / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def _one_call_ms(layer: nn.Module, x: torch.Tensor, train: bool) -> float:
    """Milliseconds of one call after a warm-up call (the first pays one-time costs: oneDNN's code generation,
    cuDNN's setup), waiting for the GPU, if any, to finish it."""
    _call(layer, x, train)
    _sync(x.device)
    start = time.perf_counter()
    _call(layer, x, train)
    _sync(x.device)
    return (time.perf_counter() - start) * 1e3


def calls_per_timing(call_ms: float) -> int:
    """How many calls of ``call_ms`` one timing runs to take :data:`MIN_TIMING_MS` (1 from there, at most 100)."""
    return max(1, min(100, math.ceil(MIN_TIMING_MS / max(call_ms, 1e-3))))


def rounds_for(estimate_ms: float, budget_ms: float, low: int, high: int) -> int:
    return int(max(low, min(high, budget_ms / max(estimate_ms, 1e-3))))


def run_speed(cells=CELLS, shapes=SHAPES, reference: bool = True, budget_ms: float = 3000.0,
              device="cpu", progress=None, padded_shapes=()) -> list[Row]:
    """A :class:`Row` per cell, shape and mode (forward without grad, training), then per cell and padded shape."""
    rows = []
    for cell in cells:
        for shape, padded in [(s, False) for s in shapes] + [(s, True) for s in padded_shapes]:
            batch, steps, input_size, hidden = shape
            layers = contenders(cell, input_size, hidden, reference, device,
                                padded_lengths(batch, steps) if padded else None)
            x = torch.randn(batch, steps, input_size, device=device)
            for mode in ("forward", "train"):
                x.requires_grad_(mode == "train")
                one = _one_call_ms(layers["torch.nn"], x, mode == "train")
                calls = calls_per_timing(one)
                estimate = one * calls * len(layers) * 1.5
                medians = time_interleaved(layers, x, mode == "train", rounds_for(estimate, budget_ms, 3, 15), calls)
                base = medians.pop("torch.nn")
                rows.append(Row(cell, shape, mode, base, {k: v / base for k, v in medians.items()}, padded))
                if progress is not None:
                    progress(rows[-1])
    return rows


def run_scaling(cells=("gru", "lstm"), steps_list=SCALING_STEPS, batch=32, input_size=32, hidden=128,
                budget_ms: float = 2000.0, device="cpu") -> list[dict]:
    """fused vs torch.nn forward+backward time as T grows (cost per step should stay flat)."""
    results = []
    for cell in cells:
        for steps in steps_list:
            layers = {k: v for k, v in contenders(cell, input_size, hidden, False, device).items()
                      if k in ("torch.nn", "fused")}
            x = torch.randn(batch, steps, input_size, device=device, requires_grad=True)
            estimate = _one_call_ms(layers["torch.nn"], x, True) * 3
            medians = time_interleaved(layers, x, True, rounds_for(estimate, budget_ms, 3, 9))
            results.append({"cell": cell, "T": steps, "torch_ms": medians["torch.nn"], "fused_ms": medians["fused"]})
    return results


def peak_training_memory(cell: str, backend: str, steps: int, batch=32, input_size=32, hidden=128,
                         steady: bool = False) -> float:
    """MiB by which one forward+backward raises peak resident memory above where it started, in a fresh
    process: its first step at this shape (``steady=False``), or a step after one at the same shape
    (``steady=True``), with the fused engine's pool and glibc's free memory handed back to the system in
    between, so that what is counted is what the step itself touches, not what libraries kept from before
    (oneDNN keeps its JIT code and scratchpad for a shape: about 2.5-5 MiB the first step pays once)."""
    code = (
        "import json;from rnnkit.benchmark import _train_once_for_memory as f;"
        f"print(json.dumps(f({cell!r},{backend!r},{steps},{batch},{input_size},{hidden},{steady!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_status(field_name: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _hand_back_free_memory() -> None:
    import ctypes
    import gc

    from rnnkit.engine.fused import workspace

    gc.collect()
    workspace.release()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed memory may stay resident, which only overstates
        pass


def _train_once_for_memory(cell, backend, steps, batch, input_size, hidden, steady=False) -> float:
    torch.set_num_threads(1)
    layers = contenders(cell, input_size, hidden, False, "cpu")
    layer = layers[backend]
    x = torch.randn(batch, steps, input_size, requires_grad=True)
    _call(layer, x if steady else torch.randn(2, 3, input_size, requires_grad=True), True)  # one-time allocations
    x.grad = None
    layer.zero_grad(set_to_none=True)
    _hand_back_free_memory()
    with open("/proc/self/clear_refs", "w") as clear:  # reset the peak (VmHWM) to the current RSS
        clear.write("5")
    before = _memory_status("VmRSS")
    _call(layer, x, True)
    return _memory_status("VmHWM") - before


def peak_gpu_training_memory(cell: str, backend: str, steps: int, batch=32, input_size=32, hidden=128,
                             steady: bool = False, device="cuda") -> float:
    """On a GPU: MiB by which one forward+backward raises the peak of memory allocated on ``device`` above
    what was allocated before it (torch's caching allocator counts every tensor exactly; what it keeps
    cached is not counted), the first step at this shape or a step after one at the same shape."""
    layers = contenders(cell, input_size, hidden, False, device)
    layer = layers[backend]
    x = torch.randn(batch, steps, input_size, device=device, requires_grad=True)
    _call(layer, x if steady else torch.randn(2, 3, input_size, device=device, requires_grad=True), True)
    x.grad = None
    layer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    _call(layer, x, True)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def run_memory(cells=("gru", "lstm"), steps_list=(100, 400, 1600), device="cpu") -> list[dict]:
    """Rows ``{"cell", "T", "torch.nn", "fused", "torch.nn steady", "fused steady"}`` in MiB: on the CPU
    :func:`peak_training_memory` (resident memory, a fresh process each), on a GPU
    :func:`peak_gpu_training_memory`."""
    on_cpu = torch.device(device).type == "cpu"

    def measure(cell, backend, steps, steady):
        if on_cpu:
            return peak_training_memory(cell, backend, steps, steady=steady)
        return peak_gpu_training_memory(cell, backend, steps, steady=steady, device=device)

    return [{"cell": cell, "T": steps,
             **{f"{b}{suffix}": measure(cell, b, steps, steady)
                for suffix, steady in (("", False), (" steady", True)) for b in ("torch.nn", "fused")}}
            for cell in cells for steps in steps_list]


# ---------------------------------------------------------------- reporting
def _contender_names(rows: list[Row]) -> list[str]:
    """The contenders these rows have ratios for, in the tables' column order."""
    return sorted({k for row in rows for k in row.ratios}, key=["control", "fused", "native", "auto",
                                                                 "reference"].index)


def _markdown_speed(rows: list[Row]) -> list[str]:
    names = _contender_names(rows)
    lines = ["| cell | B,T,I,H | mode | torch.nn ms | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for row in rows:
        cells = [f"{row.ratios[n]:.2f}x" if n in row.ratios else "" for n in names]
        lines.append(f"| {row.cell} | {','.join(map(str, row.shape))} | {row.mode} | {_ms(row.torch_ms)} | "
                     + " | ".join(cells) + " |")
    return lines


def _compact_table(title: str, columns: list[tuple[str, str]]):
    """A rich table that fits 80 columns (a pipe, a small terminal) without cutting numbers short: no
    vertical borders, two spaces between columns; ``columns`` are (header, "left" or "right")."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
    for header, justify in columns:
        table.add_column(header, justify=justify, no_wrap=True)
    return table


def _ms(value: float) -> str:
    """Milliseconds to 2 decimals, to 3 under 1 ms (a generation step's 0.04 would say little)."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def speed_table(rows: list[Row], title: str = "rnnkit / torch.nn, median time ratio (< 1.00x: faster than torch.nn)"):
    names = _contender_names(rows)
    short = {"control": "ctrl", "reference": "ref"}
    table = _compact_table(title,
                           [("cell", "left"), ("B,T,I,H", "right"), ("mode", "left"), ("torch ms", "right"),
                            *[(short.get(n, n), "right") for n in names]])
    for row in rows:
        table.add_row(row.cell, ",".join(map(str, row.shape)), "fwd" if row.mode == "forward" else row.mode,
                      _ms(row.torch_ms), *[f"{row.ratios[n]:.2f}x" if n in row.ratios else "" for n in names])
    return table


def memory_table(memory: list[dict]):
    table = _compact_table("peak training memory, MiB (B=32, I=32, H=128)",
                           [("cell", "left"), ("T", "right"), ("first step: torch", "right"), ("fused", "right"),
                            ("ratio", "right"), ("steady: torch", "right"), ("fused", "right"), ("ratio", "right")])
    for r in memory:
        table.add_row(r["cell"], str(r["T"]), f"{r['torch.nn']:.1f}", f"{r['fused']:.1f}",
                      f"{r['fused'] / r['torch.nn']:.2f}x", f"{r['torch.nn steady']:.1f}", f"{r['fused steady']:.1f}",
                      f"{r['fused steady'] / r['torch.nn steady']:.2f}x")
    return table


#: what the padded-batch table measures
PADDED_NOTE = ("Padded batches (lengths spread evenly from T down to T/3): torch.nn runs the PackedSequence its "
               "user builds (pack_padded_sequence, then pad_packed_sequence), rnnkit gets lengths=.")
PADDED_TITLE = "padded batch: rnnkit (lengths=) / torch.nn (PackedSequence)"

#: what decides whether a freed block goes back to the system, after which the next fresh buffer of its size is
#: page-faulted in again: glibc's thresholds (environment variables or tunables) or a preloaded allocator. It moves
#: torch.nn's times as much as rnnkit's (oneDNN's LSTM training at (64,200,64,256): 67k faults a step, ~40% of
#: its time, with glibc's defaults; none with the thresholds raised), so a run says which it had.
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def allocator_line() -> str:
    """The memory allocator settings of this run, for the benchmark's header."""
    settings = [f"{name}={os.environ[name]}" for name in ALLOCATOR_VARIABLES if os.environ.get(name)]
    if settings:
        return "allocator: " + ", ".join(settings)
    if platform.libc_ver()[0] == "glibc":
        return ("allocator: glibc's defaults (freed large blocks go back to the system and are page-faulted in "
                "again, in torch.nn's calls and rnnkit's: see the README's Speed section)")
    return "allocator: the platform's default"


#: how :func:`run_memory` measures, on the CPU and on a GPU
MEMORY_NOTE = ("Peak training memory (rise of peak resident memory over one forward+backward, MiB; B=32, I=32, "
               "H=128). First step: the first at this shape in a fresh process; steady: a step after one at the "
               "same shape, freed memory handed back in between:")
GPU_MEMORY_NOTE = ("Peak training memory on the GPU (rise of the peak of memory allocated by torch over one "
                   "forward+backward, MiB; B=32, I=32, H=128). First step: the first at this shape; steady: a "
                   "step after one at the same shape:")


def markdown(rows: list[Row], scaling: list[dict], memory: list[dict], header: str,
             memory_note: str = MEMORY_NOTE) -> str:
    lines = [header, "", *_markdown_speed([row for row in rows if not row.padded])]
    padded = [row for row in rows if row.padded]
    if padded:
        lines += ["", PADDED_NOTE, "", *_markdown_speed(padded)]
    if scaling:
        lines += ["", "Time vs sequence length (B=32, I=32, H=128, forward+backward):", "",
                  "| cell | T | torch.nn ms | fused ms | torch.nn µs/step | fused µs/step |", "|---|---|---|---|---|---|"]
        for r in scaling:
            lines.append(f"| {r['cell']} | {r['T']} | {r['torch_ms']:.1f} | {r['fused_ms']:.1f} | "
                         f"{r['torch_ms'] / r['T'] * 1e3:.0f} | {r['fused_ms'] / r['T'] * 1e3:.0f} |")
    if memory:
        lines += ["", memory_note,
                  "", "| cell | T | torch.nn first | fused first | ratio | torch.nn steady | fused steady | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in memory:
            lines.append(f"| {r['cell']} | {r['T']} | {r['torch.nn']:.1f} | {r['fused']:.1f} | "
                         f"{r['fused'] / r['torch.nn']:.2f}x | {r['torch.nn steady']:.1f} | {r['fused steady']:.1f} | "
                         f"{r['fused steady'] / r['torch.nn steady']:.2f}x |")
    return "\n".join(lines) + "\n"
