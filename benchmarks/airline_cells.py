"""Would another cell, dropout, or an average of cells pass the airline bar with settings chosen honestly?
Scored like airline_selection.py: rolling-origin validation inside the 120 training months (fit on 72 / 84 /
96, forecast 24, 3 seeds), held-out test MAPE (fit on 120, forecast 1959-1960) beside it.

Part 1 scores cell x horizon x weight decay x dropout (24 settings). Part 2 keeps every forecast of the
defaults with each cell and weight decay 0.5 / 2, and scores the averages of two or three cells' forecasts
(an ensemble across cells), seed by seed.

    python benchmarks/airline_cells.py 0 2 & python benchmarks/airline_cells.py 1 2     # ~7 min on 2 cores
    python benchmarks/airline_cells.py ensembles                                        # part 2, ~4 min
"""

import itertools
import json
import sys

import numpy as np
from airline_selection import ORIGINS, SEEDS, quiet, report  # this script's folder is on sys.path when run as above

import rnnkit as rk
from rnnkit.data.series import load_airline
from rnnkit.tasks.metrics import forecast_metrics

CELLS = ("gru", "lstm", "rnn")


def grid(values, part: int, parts: int) -> None:
    settings = itertools.product(CELLS, (12, 24), (0.5, 2), (0.0, 0.2))
    for index, (cell, horizon, weight_decay, dropout) in enumerate(settings):
        if index % parts == part:
            report(values, {"cell": cell, "horizon": horizon, "weight_decay": weight_decay, "dropout": dropout})


def ensembles(values) -> None:
    ends = (*ORIGINS, 120)
    forecasts = {}  # (cell, weight decay, end, seed) -> 24 forecasts
    for cell, weight_decay, end, seed in itertools.product(CELLS, (0.5, 2), ends, range(SEEDS)):
        model = rk.Forecaster(season=12, seed=seed, cell=cell, weight_decay=weight_decay, benchmark_weight=0)
        model.fit(values[:end], progress=False)
        forecasts[cell, weight_decay, end, seed] = np.asarray(model.predict(values[:end], 24, level=None).mean).ravel()

    def mape(cells, weight_decay, end):
        """Mean over seeds of the MAPE of the cells' averaged forecast."""
        averaged = [np.mean([forecasts[c, weight_decay, end, s] for c in cells], 0) for s in range(SEEDS)]
        scores = [forecast_metrics(values[end:end + 24], f, values[:end], season=12)["MAPE"] for f in averaged]
        return float(np.mean(scores))

    for weight_decay in (0.5, 2):
        for size in (1, 2, 3):
            for cells in itertools.combinations(CELLS, size):
                validation = np.mean([mape(cells, weight_decay, end) for end in ORIGINS])
                print(json.dumps({"cells": "+".join(cells), "weight_decay": weight_decay}),
                      f"validation {validation:.2f}", f"test {mape(cells, weight_decay, 120):.2f}", flush=True)


if __name__ == "__main__":
    quiet()
    series = load_airline()[1].astype(float)
    if sys.argv[1:2] == ["ensembles"]:
        ensembles(series)
    else:
        grid(series, *(int(a) for a in sys.argv[1:3]))
