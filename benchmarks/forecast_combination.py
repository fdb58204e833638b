"""How the Forecaster's ``benchmark_weight`` default was chosen: averaging the network's forecast with the
seasonal naive forecast with drift, scored where the choice may honestly be made.

1. Airline passengers, rolling-origin validation *inside* the first 120 months (fit on 72 / 84 / 96 months,
   forecast the next 24; 3 seeds), for weights 0 (the network alone) to 1 (the drift forecast alone), beside
   the held-out test (fit on 120, forecast 1959-1960), which must not choose.
2. The other series rnnkit ships access to (statsmodels): mean absolute error of the network alone, the
   drift forecast and their equal-weight average over rolling origins, 2 seeds: does the combination help
   beyond the airline data, with and without a season?

The network is fitted once per origin and seed (``benchmark_weight=0``) and combined here with
:func:`rnnkit.tasks.metrics.drift_forecast` on the log (level) scale, as the Forecaster does (the tests hold
the two equal).

    python benchmarks/forecast_combination.py airline     # ~15 s
    python benchmarks/forecast_combination.py others      # ~1-2 minutes (needs statsmodels: rnnkit[datasets])
"""

import logging
import sys
import warnings

import numpy as np
import torch

import rnnkit as rk
from rnnkit.data.series import load_airline, load_statsmodels
from rnnkit.tasks.metrics import drift_forecast

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
ORIGINS = (72, 84, 96)


def quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)


def combine(network: np.ndarray, drift: np.ndarray, weight: float, log: bool) -> np.ndarray:
    if log:
        return np.exp((1 - weight) * np.log(network) + weight * np.log(drift))
    return (1 - weight) * network + weight * drift


def network_forecast(values, end: int, horizon: int, season, seed: int, steps: int | None = None) -> np.ndarray:
    """``steps`` (default ``horizon``) forecasts after ``values[:end]`` by a network of that ``horizon``."""
    model = rk.Forecaster(season=season, horizon=horizon, seed=seed, benchmark_weight=0)
    return model.fit(values[:end], progress=False).predict(values[:end], steps or horizon, level=None).mean


def airline() -> None:
    values = load_airline()[1].astype(float)
    mape = {}
    for end in (*ORIGINS, 120):
        actual, drift = values[end:end + 24], drift_forecast(values[:end], 24, season=12, log=True)
        networks = [network_forecast(values, end, 12, 12, seed, steps=24) for seed in range(3)]
        mape[end] = {w: [100 * np.mean(np.abs(actual - combine(n, drift, w, True)) / actual) for n in networks]
                     for w in WEIGHTS}
    print("| drift weight | validation MAPE % (72 / 84 / 96 months) | test MAPE % (seeds 0 / 1 / 2) |")
    print("|---|---|---|")
    for w in WEIGHTS:
        per_origin = [np.mean(mape[end][w]) for end in ORIGINS]
        test = mape[120][w]
        print(f"| {w:g} | {np.mean(per_origin):.2f} ({' / '.join(f'{v:.1f}' for v in per_origin)}) | "
              f"{np.mean(test):.2f} ({' / '.join(f'{v:.2f}' for v in test)}) |", flush=True)


def others() -> None:
    print("| series | season | horizon x origins | MAE: network alone | drift | average of the two |")
    print("|---|---|---|---|---|---|")
    for name, season, horizon, folds, tail in (("nile", None, 10, 4, None), ("sunspots", None, 10, 4, None),
                                               ("elnino", 12, 12, 4, None), ("co2", 52, 52, 3, 600)):
        values = load_statsmodels(name)[1].astype(float)
        values = values if tail is None else values[-tail:]
        log = bool((values > 0).all())
        errors = {"network": [], "drift": [], "average": []}
        for fold in range(folds):
            end = len(values) - (folds - fold) * horizon
            actual, drift = values[end:end + horizon], drift_forecast(values[:end], horizon, season, log)
            for seed in range(2):
                network = network_forecast(values, end, horizon, season, seed)
                for key, forecast in (("network", network), ("drift", drift),
                                      ("average", combine(network, drift, 0.5, log))):
                    errors[key].append(np.mean(np.abs(actual - forecast)))
        print(f"| {name}{' (last 600 weeks)' if tail else ''} | {season or 'none'} | {horizon} x {folds} | "
              + " | ".join(f"{np.mean(errors[k]):.3f}" for k in ("network", "drift", "average")) + " |", flush=True)


if __name__ == "__main__":
    quiet()
    {"airline": airline, "others": others}[sys.argv[1] if len(sys.argv) > 1 else "airline"]()
