"""How the Forecaster's defaults were chosen: rolling-origin validation inside the training data.

The airline quality bar is judged on the last 24 months (1959-1960), which must not choose the settings.
This script scores a grid of settings on three origins *inside* the first 120 months (fit on the first
72 / 84 / 96 months, forecast the next 24), three seeds each, and prints that validation MAPE beside the
held-out test MAPE (fit on 120, forecast 1959-1960) so that the two can be compared honestly. It scores the
network alone (``benchmark_weight=0``); benchmarks/forecast_combination.py chose the averaging with the
drift forecast that the Forecaster does by default since.

    python benchmarks/airline_selection.py            # the whole grid, ~12 minutes on one core
    python benchmarks/airline_selection.py 0 2 & python benchmarks/airline_selection.py 1 2   # two halves
"""

import itertools
import json
import logging
import sys
import warnings

import numpy as np
import torch

import rnnkit as rk
from rnnkit.data.series import load_airline

GRID = {"window": [12, 24], "horizon": [12, 24], "weight_decay": [0.5, 1, 2, 4], "hidden_size": [16, 32],
        "learning_rate": [0.003, 0.01]}
ORIGINS = (72, 84, 96)  # validation origins inside the 120 training months
SEEDS = 3


def mape(values, end, options):
    """MAPE of each seed's 24-month forecast from `end`, fitting on values[:end]."""
    scores = []
    for seed in range(SEEDS):
        model = rk.Forecaster(season=12, seed=seed, benchmark_weight=0, **options).fit(values[:end], progress=False)
        scores.append(model.evaluate(values[:end], values[end:end + 24])["model"]["MAPE"])
    return scores


def quiet() -> None:
    """One thread per process (run two halves side by side), no Lightning chatter."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)


def report(values, options: dict, shown: dict | None = None) -> None:
    """Print the validation MAPE (mean over origins, and each) and the test MAPE (mean over seeds, and each)."""
    validation = [float(np.mean(mape(values, end, options))) for end in ORIGINS]
    test = mape(values, 120, options)
    print(json.dumps(shown or options), f"validation {np.mean(validation):.2f}",
          f"({' / '.join(f'{v:.1f}' for v in validation)})", f"test {np.mean(test):.2f}",
          f"({' / '.join(f'{v:.1f}' for v in test)})", flush=True)


def main(part: int = 0, parts: int = 1) -> None:
    quiet()
    values = load_airline()[1].astype(float)
    for index, combo in enumerate(itertools.product(*GRID.values())):
        if index % parts == part:
            report(values, dict(zip(GRID, combo)))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
