"""The main demo: a GRU forecaster on the built-in airline passengers series.

Fitted on the first 120 months (1949-1958), it forecasts the last 24 (1959-1960), which it never saw. The
forecast averages the network's with the seasonal naive forecast with drift (the Forecaster's default with a
season); both are scored beside it, and beside the naive and seasonal-naive forecasts. The model and a
forecast plot are saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnkit.data.series import load_airline
from rnnkit.plots import plot_forecast
from rnnkit.tasks import Forecaster

HELD_OUT = 24


@dataclass
class DemoResult:
    report: dict  # Forecaster.evaluate's metrics for the model and the baselines
    model_dir: Path
    plot: Path


def run_demo(out: str | Path = "rnnkit-demo", epochs: int = 200, seed: int = 0, progress: bool = True) -> DemoResult:
    _, passengers = load_airline()
    history, actual = passengers[:-HELD_OUT], passengers[-HELD_OUT:]
    model = Forecaster(season=12, seed=seed).fit(history, epochs=epochs, progress=progress)
    report = model.evaluate(history, actual)
    out = Path(out)
    model.save(out / "airline-model")
    plot = out / "airline-forecast.png"
    plot_forecast(history, model.predict(history, horizon=HELD_OUT), actual, path=plot,
                  title="Airline passengers: 1959-1960 forecast from 1949-1958 (thousands)")
    return DemoResult(report, out / "airline-model", plot)
