"""Time one fused training step for every cell x option x lengths x direction combination, and flag the
ones far slower than the plain cell of their direction count: a guard against a slow path hiding in a
configuration no benchmark row covers (the reset-before GRU once took 100x its normal time this way).

    python benchmarks/option_sweep.py            # 192 combinations at (32,100,32,128), ~1-2 minutes
    python benchmarks/option_sweep.py --all      # print every combination, not only the flagged ones
"""

import itertools
import statistics
import sys
import time

import torch

import rnnkit as rk

EXTRA = {"rnn": [{}, {"nonlinearity": "relu"}], "gru": [{}, {"reset_after": False}], "lstm": [{}, {"peepholes": True}]}
#: times the plain cell's step; options cost up to ~3x on the cheap SimpleRNN (zoneout's sampling, layer norm)
FLAG_AT = 5.0


def step_ms(layer, x, lengths, repeats: int = 5) -> float:
    """Median milliseconds of a forward+backward after a warm-up call."""
    kwargs = {} if lengths is None else {"lengths": lengths}
    layer(x, **kwargs)[0].sum().backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        layer(x, **kwargs)[0].sum().backward()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(show_all: bool = False) -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 100, 32)
    lengths = torch.randint(10, 101, (32,))
    lengths[0] = 100
    flagged = 0
    for cell, extra in ((c, e) for c, extras in EXTRA.items() for e in extras):
        plain = {}
        for bidirectional, layer_norm, dropout, zoneout, use_lengths in itertools.product(
                (False, True), (False, True), (0.0, 0.2), (0.0, 0.1), (False, True)):
            options = {**extra, "layer_norm": layer_norm, "recurrent_dropout": dropout, "zoneout": zoneout,
                       "bidirectional": bidirectional}
            layer = rk.RNN(32, 128, cell=cell, backend="fused", **options)
            ms = step_ms(layer, x, lengths if use_lengths else None)
            base = plain.setdefault(bidirectional, ms)  # the first of each direction count is the plain cell
            slow = ms > FLAG_AT * base
            flagged += slow
            if slow or show_all:
                print(f"{'SLOW ' if slow else ''}{cell} {options} lengths={use_lengths}: {ms:.1f} ms "
                      f"({ms / base:.1f}x the plain cell)", flush=True)
    print(f"{flagged} of {sum(len(e) for e in EXTRA.values()) * 32} combinations above {FLAG_AT}x the plain cell")


if __name__ == "__main__":
    main("--all" in sys.argv[1:])
