"""How fast can a recurrent layer's training step be on this CPU? Time the matrix products every forward+backward
must do — alone, with nothing around them — and set them beside torch.nn, the fused engine and (for the
layer-norm LSTM) the reference loop, measured in the same run.

The products (B, T, I, H; N = B*T rows; G = 1, 3, 4 gate blocks for the Elman RNN, GRU, LSTM): the input
projection X W_ih^T [N, G*H] for all steps, T recurrent products h W_hh^T forward and T products g W_hh
backward, the weight gradients G^T H and G^T X, and the input gradient G W_ih. Each is timed by the faster of
ATen (MKL) and torch's oneDNN linear, with outputs into kept buffers where the library allows it. Any
implementation that does this arithmetic — torch.nn, the fused engine, the reference loop — does at least
these products, so no training step can be faster than their sum, and "products / torch.nn" is the lowest
ratio to torch.nn any engine could reach at that shape (the pointwise work, the layouts and the framework
come on top). For the layer-norm LSTM: if the reference loop takes less than 3x that sum, "3x faster than
the reference" cannot be reached at that shape.

    python benchmarks/gemm_floor.py                 # the LN-LSTM table, ~1-3 minutes
    python benchmarks/gemm_floor.py rnn gru lstm    # the floor of each cell against torch.nn, ~3-8 minutes
"""

import statistics
import sys
import time

import torch

from rnnkit.benchmark import SHAPES, contenders, time_interleaved

GATE_BLOCKS = {"rnn": 1, "gru": 3, "lstm": 4, "ln-lstm": 4}

_linear = torch.ops.mkldnn._linear_pointwise


def median_ms(fn, rounds: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def onednn(a, weight):
    """a @ weight^T through oneDNN (weight [out, in])."""
    return _linear(a, weight, None, "none", [], "")


def gemm_floor(batch: int, steps: int, inputs: int, hidden: int, blocks: int = 4) -> dict[str, float]:
    """Milliseconds of each product of one training step with ``blocks`` gate blocks of ``hidden`` units."""
    rows, gates = batch * steps, blocks * hidden
    x, h = torch.randn(rows, inputs), torch.randn(batch, hidden)
    w_ih, w_hh = torch.randn(gates, inputs), torch.randn(gates, hidden)
    w_hh_t, w_ih_t = w_hh.t().contiguous(), w_ih.t().contiguous()
    g_step, g_all, h_all = torch.randn(batch, gates), torch.randn(rows, gates), torch.randn(rows, hidden)
    projected, step_out, step_grad = torch.empty(rows, gates), torch.empty(batch, gates), torch.empty(batch, hidden)
    return {
        "input projection": median_ms(lambda: torch.mm(x, w_ih.t(), out=projected)),
        "recurrent forward": min(median_ms(lambda: [onednn(h, w_hh) for _ in range(steps)]),
                                 median_ms(lambda: [torch.mm(h, w_hh.t(), out=step_out) for _ in range(steps)])),
        "recurrent backward": min(median_ms(lambda: [onednn(g_step, w_hh_t) for _ in range(steps)]),
                                  median_ms(lambda: [torch.mm(g_step, w_hh, out=step_grad) for _ in range(steps)])),
        "dW_hh": min(median_ms(lambda: onednn(h_all.t().contiguous(), g_all.t())),
                     median_ms(lambda: g_all.t() @ h_all)),
        "dW_ih": min(median_ms(lambda: onednn(x.t().contiguous(), g_all.t())), median_ms(lambda: g_all.t() @ x)),
        "dX": min(median_ms(lambda: onednn(g_all, w_ih_t)), median_ms(lambda: g_all @ w_ih)),
    }


def ln_lstm_table() -> None:
    print("| B,T,I,H | products alone ms | LN-LSTM fused ms | reference loop ms | reference / products |"
          " reference / fused |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        batch, steps, inputs, hidden = shape
        floor = sum(gemm_floor(*shape).values())
        layers = {k: v for k, v in contenders("ln-lstm", inputs, hidden, True, "cpu").items()
                  if k in ("fused", "reference")}
        times = time_interleaved(layers, torch.randn(batch, steps, inputs, requires_grad=True), True, rounds=7)
        print(f"| {','.join(map(str, shape))} | {floor:.1f} | {times['fused']:.1f} | {times['reference']:.1f} | "
              f"{times['reference'] / floor:.2f}x | {times['reference'] / times['fused']:.2f}x |", flush=True)


def cell_table(cells: list[str]) -> None:
    """Per cell and shape: the products alone against torch.nn and the fused engine (training, input with grad,
    as ``rnnkit bench`` times it)."""
    print("| cell | B,T,I,H | products alone ms | torch.nn ms | fused ms | products / torch.nn (the lowest ratio "
          "any engine can reach) | fused / torch.nn |")
    print("|---|---|---|---|---|---|---|")
    for cell in cells:
        for shape in SHAPES:
            batch, steps, inputs, hidden = shape
            floor = sum(gemm_floor(*shape, GATE_BLOCKS[cell]).values())
            layers = {k: v for k, v in contenders(cell, inputs, hidden, False, "cpu").items()
                      if k in ("torch.nn", "fused")}
            times = time_interleaved(layers, torch.randn(batch, steps, inputs, requires_grad=True), True, rounds=7)
            base = times["torch.nn"]
            print(f"| {cell} | {','.join(map(str, shape))} | {floor:.1f} | {base:.1f} | {times['fused']:.1f} | "
                  f"{floor / base:.2f}x | {times['fused'] / base:.2f}x |", flush=True)


def main() -> None:
    torch.manual_seed(0)
    cells = sys.argv[1:]
    unknown = [c for c in cells if c not in GATE_BLOCKS]
    if unknown:
        raise SystemExit(f"unknown cell {unknown[0]!r}: expected some of {', '.join(GATE_BLOCKS)}")
    if cells:
        cell_table(cells)
    else:
        ln_lstm_table()


if __name__ == "__main__":
    main()
