r"""Time series for forecasting: validation, transforms fitted on training data only, and windows.

The forecaster learns on a stationary version of the series:

.. math::
    x_t = \log y_t \ (\text{if log}),\qquad z_t = x_t - x_{t-m}\ (\text{if a season } m),\qquad
    s_t = (z_t - \mu) / \sigma

and forecasts are mapped back with :meth:`SeriesTransform.inverse` (seasonal differences are undone
step by step, using forecasts where the horizon runs past the history).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np


def as_series(values, name: str = "series") -> np.ndarray:
    """``values`` as a float64 array ``[T, F]`` (a 1-D input becomes ``[T, 1]``), checked for NaN/inf."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D series or a 2-D [T, F] array, got shape {list(array.shape)}")
    bad = ~np.isfinite(array)
    if bad.any():
        where = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{name} contains NaN or infinite values (first at index {where}); fill or drop them first")
    return array


@dataclass
class SeriesTransform:
    """log -> seasonal difference -> standardisation, with every statistic from the training data."""

    log: bool
    season: int | None
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, series: np.ndarray, log: bool | str = "auto", season: int | None = None) -> "SeriesTransform":
        """Fit on ``series [T, F]``. ``log="auto"`` takes logs when every value is positive.

        Raises:
            ValueError: log asked for a series with values <= 0; a series too short for the season;
                a constant (transformed) series, which has nothing to learn.
        """
        if log == "auto":
            log = bool((series > 0).all())
        elif log and not (series > 0).all():
            raise ValueError(f"log=True needs a positive series, got minimum {series.min():g}")
        if season is not None and (not isinstance(season, int) or season < 1 or season >= len(series)):
            raise ValueError(f"season must be an integer in [1, T-1] = [1, {len(series) - 1}], got {season!r}")
        transform = cls(bool(log), season, [0.0] * series.shape[1], [1.0] * series.shape[1])
        z = transform._stationary(series)
        std = z.std(axis=0)
        if (std < 1e-12).any():
            column = int(np.argmax(std < 1e-12))
            raise ValueError(f"column {column} of the series is constant after the transform (std {std[column]:.3g}); "
                             "there is nothing to learn")
        transform.mean, transform.std = z.mean(axis=0).tolist(), std.tolist()
        return transform

    def _stationary(self, series: np.ndarray) -> np.ndarray:
        x = np.log(series) if self.log else series
        return x[self.season:] - x[: -self.season] if self.season else x

    def forward(self, series: np.ndarray) -> np.ndarray:
        """``series [T, F]`` -> standardised ``[T - m, F]``."""
        if self.log and not (series > 0).all():
            raise ValueError(f"the model was fitted on logs, so the series must stay positive; got minimum {series.min():g}")
        return (self._stationary(series) - np.asarray(self.mean)) / np.asarray(self.std)

    def level(self, series: np.ndarray) -> np.ndarray:
        """The series on the scale where seasonal differences are taken (log or not)."""
        return np.log(series) if self.log else series

    def inverse(self, scaled_future: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Standardised forecasts ``[H, F]`` following ``history [T, F]`` -> forecasts on the original scale."""
        return self.unlevel(self.integrate(scaled_future, history))

    def integrate(self, scaled_future: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Forecasts on the level scale: undo standardisation, then the seasonal differences."""
        z = scaled_future * np.asarray(self.std) + np.asarray(self.mean)
        if not self.season:
            return z
        levels = list(self.level(history))
        for step in z:
            levels.append(levels[-self.season] + step)
        return np.asarray(levels[len(history):])

    def unlevel(self, levels: np.ndarray) -> np.ndarray:
        return np.exp(levels) if self.log else levels

    def to_config(self) -> dict:
        return asdict(self)


def windows(scaled: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(inputs [S, window, F], targets [S, horizon, F])`` pairs that fit in ``scaled [N, F]``."""
    count = len(scaled) - window - horizon + 1
    if count < 1:
        raise ValueError(f"the series is too short: after the transform it has {len(scaled)} steps, and "
                         f"window={window} + horizon={horizon} need at least {window + horizon}")
    index = np.arange(count)[:, None]
    inputs = scaled[index + np.arange(window)]
    targets = scaled[index + window + np.arange(horizon)]
    return inputs, targets


def load_airline() -> tuple[list[str], np.ndarray]:
    """The monthly airline passengers series, 1949-01 to 1960-12 (144 values, thousands)."""
    text = resources.files("rnnkit.data").joinpath("builtin/airline.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return [r["Date"] for r in rows], np.array([float(r["Passengers"]) for r in rows])


def read_csv_column(path: str | Path, column: str) -> np.ndarray:
    """One numeric column of a CSV file.

    Raises:
        FileNotFoundError / ValueError: no such file, no such column (the message lists the columns), or a
            value that is not a number (the message gives the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file at {path}")
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{path} has no column {column!r}; its columns are {reader.fieldnames}")
        values = []
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row[column])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: {column}={row[column]!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{path}, line {line}: {column}={row[column]!r} is not finite")
            values.append(value)
    if not values:
        raise ValueError(f"{path} has no rows")
    return np.asarray(values)


STATSMODELS_SERIES = {
    "sunspots": "yearly sunspot activity 1700-2008 (309 values)",
    "nile": "yearly flow of the Nile at Aswan 1871-1970 (100 values)",
    "elnino": "monthly sea surface temperature in the El Nino region 1950-2010 (732 values)",
    "co2": "weekly atmospheric CO2 at Mauna Loa 1958-2001 (2284 values; missing weeks interpolated)",
}


def load_statsmodels(name: str) -> tuple[list[str], np.ndarray]:
    """A series from the data files statsmodels ships (``pip install "rnnkit[datasets]"``; statsmodels is not
    imported): ``(labels, values)`` with labels such as years or dates.

    Raises:
        ValueError: an unknown name. RuntimeError (DatasetUnavailable): statsmodels is not installed.
    """
    from rnnkit.data.ucr import DatasetUnavailable, package_directory

    if name not in STATSMODELS_SERIES:
        raise ValueError(f"unknown statsmodels series {name!r}; available: {', '.join(STATSMODELS_SERIES)}")
    root = package_directory("statsmodels")
    path = None if root is None else root / "datasets" / name / f"{name}.csv"
    if path is None or not path.is_file():
        raise DatasetUnavailable(f"the {name} series ships inside statsmodels, which is not installed: "
                                 "pip install 'rnnkit[datasets]'")
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))[1:]
    if name == "elnino":  # one row per year, one column per month
        labels = [f"{row[0]}-{month:02d}" for row in rows for month in range(1, 13)]
        values = np.array([float(v) for row in rows for v in row[1:13]])
    else:
        labels = [row[0] for row in rows]
        values = np.array([float(row[1]) if row[1] else np.nan for row in rows])
    missing = np.isnan(values)
    if missing.any():  # co2: a few weeks without a measurement
        index = np.arange(len(values))
        values[missing] = np.interp(index[missing], index[~missing], values[~missing])
    return labels, values
