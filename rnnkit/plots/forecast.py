"""Forecast figures."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from rnnkit.plots.gradients import _finish, plt


def plot_forecast(history, forecast, actual=None, title: str = "Forecast", path=None) -> Figure:
    """History, the forecast with its interval (if any), and the actual values (if given)."""
    history = np.asarray(history, dtype=float)
    steps = np.arange(len(history), len(history) + len(forecast.mean))
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.plot(np.arange(len(history)), history, color="black", label="history")
    if actual is not None:
        axes.plot(steps, np.asarray(actual, dtype=float), color="gray", label="actual")
    axes.plot(steps, forecast.mean, color="C0", label="forecast")
    if forecast.lower is not None:
        axes.fill_between(steps, forecast.lower, forecast.upper, color="C0", alpha=0.2,
                          label=f"{forecast.level:.0%} interval")
    return _finish(figure, axes, "time step", "value", title, path)
