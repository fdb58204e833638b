"""Forecasting a series with a recurrent network, in a few lines.

>>> model = rk.Forecaster(cell="gru", hidden_size=16, window=12, horizon=12, season=12)
>>> model.fit(series[:-24])                       # progress bar; scaling fitted on these values only
>>> forecast = model.predict(series[:-24], horizon=24)   # .mean, .lower, .upper (90% by default)
>>> model.evaluate(series[:-24], series[-24:])    # MAE, RMSE, MAPE, sMAPE, MASE beside naive baselines
>>> model.save("airline-model/"); rk.Forecaster.load("airline-model/")

The network reads a window of the stationary series (log, seasonal difference, standardisation: see
:mod:`rnnkit.data.series`) and predicts the next ``horizon`` steps at once (``strategy="direct"``) or
one step, fed back ``horizon`` times (``strategy="recursive"``); longer horizons continue block by block.
With a season, the forecast is by default the equal-weight average (on the log scale when logs are taken)
of the network's forecast and the seasonal naive forecast with drift (``benchmark_weight``): a forecast
combination, which on short seasonal series was more accurate than either alone (docs/results.md);
``evaluate`` reports the network alone and the drift forecast beside it.
Prediction intervals are quantiles of the errors the same procedure makes from every training origin
(``interval="residual"``), or of forecast paths sampled with dropout on (``interval="dropout"``, MC
dropout, Gal & Ghahramani 2016; needs ``dropout`` or ``recurrent_dropout`` > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rnnkit as rk
from rnnkit._checks import check_choice, check_positive_int, check_probability
from rnnkit.data.series import SeriesTransform, as_series, windows
from rnnkit.io import check_state_dict, load_model, save_model
from rnnkit.tasks.metrics import drift_forecast, forecast_metrics, mean_change, naive_forecast, seasonal_naive_forecast
from rnnkit.tasks.trainer import check_training_options, fit_module
from rnnkit.training.modules import RegressionModule

TASK = "forecaster"


class ForecastNetwork(nn.Module):
    """Recurrent layers, then a linear map from the last step's output to all ``horizon`` steps.

    Reads ``inputs`` features per step (the series' ``features`` columns, then any exogenous ones) and
    predicts the ``features`` columns."""

    def __init__(self, features: int, horizon: int, cell: str, hidden_size: int, num_layers: int,
                 dropout: float = 0.0, inputs: int | None = None, **options) -> None:
        super().__init__()
        self.features, self.horizon, self.inputs = features, horizon, inputs or features
        self.rnn = rk.RNN(self.inputs, hidden_size, num_layers, cell=cell, dropout=dropout, **options)
        self.dropout = nn.Dropout(dropout)  # before the head, so that one layer can have dropout too
        self.head = nn.Linear(hidden_size * self.rnn.num_directions, horizon * features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, W, F] -> [B, H, F]
        out, _ = self.rnn(x)
        return self.head(self.dropout(out[:, -1])).view(x.shape[0], self.horizon, self.features)


@dataclass
class Forecast:
    """Point forecasts and, when asked for, a central prediction interval (each ``[H]`` or ``[H, F]``)."""

    mean: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    level: float | None = None


class Forecaster:
    """A recurrent forecaster with scikit-learn-like ``fit / predict / evaluate / save / load``.

    Args:
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``. hidden_size, num_layers, dropout, bidirectional,
            layer_norm and other cell options go to :class:`rnnkit.RNN`.
        window: input steps the network reads. horizon: steps to forecast by default.
        strategy: ``"direct"`` (a network output for each of the ``horizon`` steps) or ``"recursive"`` (a
            one-step network whose forecasts are fed back).
        season: seasonal period (12 for monthly data) to difference away; None for none.
        log: take logs first (``"auto"``: when every value is positive).
        learning_rate, weight_decay: AdamW's step size and decoupled weight decay (which pulls forecasts
            toward the series' mean seasonal change: useful on short series).
        benchmark_weight: the share of the seasonal naive forecast with drift (the mean seasonal change of
            the training series, see :func:`rnnkit.tasks.metrics.drift_forecast`) in the forecast, averaged
            with the network's on the level (log) scale; 0 for the network alone. ``"auto"``: 0.5 with a
            season, 0 without (naive with drift misses cycles a network can learn, e.g. sunspots').
        seed: the seed of initialisation and batch order.
    """

    def __init__(self, cell: str = "gru", hidden_size: int = 16, num_layers: int = 1, window: int = 12,
                 horizon: int = 12, season: int | None = None, log: bool | str = "auto", dropout: float = 0.0,
                 learning_rate: float = 3e-3, weight_decay: float = 0.5, seed: int = 0, strategy: str = "direct",
                 benchmark_weight: float | str = "auto", **layer_options) -> None:
        if benchmark_weight != "auto":
            if isinstance(benchmark_weight, bool) or not isinstance(benchmark_weight, (int, float)) \
                    or not 0.0 <= benchmark_weight <= 1.0:
                raise ValueError(f"benchmark_weight must be a number in [0, 1] or 'auto', got {benchmark_weight!r}")
            benchmark_weight = float(benchmark_weight)
        self.options = {
            "cell": check_choice("cell", cell, ("rnn", "lstm", "gru")),
            "hidden_size": check_positive_int("hidden_size", hidden_size),
            "num_layers": check_positive_int("num_layers", num_layers),
            "window": check_positive_int("window", window),
            "horizon": check_positive_int("horizon", horizon),
            "season": None if season is None else check_positive_int("season", season),
            "log": log if log == "auto" else bool(log),
            "dropout": check_probability("dropout", dropout),
            "learning_rate": float(learning_rate),
            "weight_decay": float(weight_decay),
            "seed": int(seed),
            "strategy": check_choice("strategy", strategy, ("direct", "recursive")),
            "benchmark_weight": benchmark_weight,
            "layer_options": dict(layer_options),
        }
        self.network: ForecastNetwork | None = None
        self.transform: SeriesTransform | None = None
        self.errors: np.ndarray | None = None  # [S, H, F] in-sample errors on the level scale
        self.exogenous_scale: tuple[list[float], list[float]] | None = None  # covariates' (mean, std)
        self.drift: list[float] | None = None  # mean change over one season (one step) on the level scale

    @property
    def benchmark_weight(self) -> float:
        """The drift forecast's share in the forecast (``"auto"`` resolved)."""
        weight = self.options["benchmark_weight"]
        if weight == "auto":
            return 0.5 if self.options["season"] else 0.0
        return weight

    # ---------------------------------------------------------------- training
    def _build(self, features: int, inputs: int) -> ForecastNetwork:
        o = self.options
        outputs = o["horizon"] if o["strategy"] == "direct" else 1
        return ForecastNetwork(features, outputs, o["cell"], o["hidden_size"], o["num_layers"],
                               dropout=o["dropout"], inputs=inputs, **o["layer_options"])

    def _exogenous(self, exogenous, rows: int | None, name: str) -> np.ndarray | None:
        """Covariates checked against the fit and standardised, ``[rows, E]`` (any rows when None)."""
        if self.exogenous_scale is None:
            if exogenous is not None:
                raise ValueError(f"{name} given, but this model was fitted without exogenous inputs")
            return None
        mean, std = (np.asarray(v) for v in self.exogenous_scale)
        if exogenous is None:
            raise ValueError(f"{name} is needed: the model was fitted with {len(mean)} exogenous columns")
        values = as_series(exogenous, name)
        if values.shape[1] != len(mean) or (rows is not None and len(values) != rows):
            expected = f"[{'T' if rows is None else rows}, {len(mean)}]"
            raise ValueError(f"{name} must have shape {expected}, got {list(values.shape)}")
        return (values - mean) / std

    def _features(self, history: np.ndarray, exogenous: np.ndarray | None) -> np.ndarray:
        """The network's input rows for ``history``: the stationary series, then the aligned covariates."""
        z = self.transform.forward(history)
        return z if exogenous is None else np.concatenate([z, exogenous[len(history) - len(z):]], axis=1)

    def fit(self, series, epochs: int = 200, batch_size: int = 32, validation_size: int = 0, exogenous=None,
            **training) -> "Forecaster":
        """Fit on ``series`` (``[T]`` or ``[T, F]``: every column is forecast).

        ``exogenous`` (``[T, E]``, aligned with ``series``): covariates read alongside the series' window
        (standardised with their training mean and standard deviation); predictions then need them too.

        ``validation_size`` > 0 holds out the last windows for a validation loss. ``training`` options go to
        :func:`rnnkit.tasks.trainer.fit_module`: ``patience`` (early stopping), ``gradient_clip``,
        ``progress``, ``log_dir`` (CSV + TensorBoard), ``devices``/``strategy`` (data-parallel),
        ``checkpoint_dir``/``resume`` (continue after Ctrl-C), ``callbacks``, ``accelerator="gpu"`` (train on a
        CUDA GPU; predictions run on the CPU).

        Raises:
            ValueError: NaN/inf, a constant series, or one shorter than season + window + horizon.
        """
        check_training_options(self, training)
        o = self.options
        values = as_series(series)
        self.transform = SeriesTransform.fit(values, o["log"], o["season"])
        self.drift = mean_change(self.transform.level(values), o["season"] or 1).tolist()
        self.exogenous_scale = None
        if exogenous is not None:
            raw = as_series(exogenous, "exogenous")
            if len(raw) != len(values):
                raise ValueError(f"exogenous must have one row per series value ({len(values)}), got {len(raw)}")
            self.exogenous_scale = (raw.mean(0).tolist(), np.where(raw.std(0) > 1e-12, raw.std(0), 1.0).tolist())
        covariates = self._exogenous(exogenous, len(values), "exogenous")
        features = self._features(values, covariates)
        inputs, targets = windows(features, o["window"], o["horizon"] if o["strategy"] == "direct" else 1)
        targets = targets[..., : values.shape[1]]
        if validation_size >= len(inputs):
            raise ValueError(f"validation_size={validation_size} leaves no training window (there are {len(inputs)})")
        pl.seed_everything(o["seed"], verbose=False)
        self.network = self._build(values.shape[1], features.shape[1])
        dataset = TensorDataset(torch.as_tensor(inputs, dtype=torch.float32), torch.as_tensor(targets, dtype=torch.float32))
        split = len(inputs) - validation_size
        train = DataLoader(torch.utils.data.Subset(dataset, range(split)), batch_size=batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(o["seed"]))
        validation = (DataLoader(torch.utils.data.Subset(dataset, range(split, len(inputs))), batch_size=batch_size)
                      if validation_size else None)
        module = RegressionModule(self.network, o["learning_rate"], o["weight_decay"])
        fit_module(module, train, validation, epochs, **training)
        self.network.eval()
        self.errors = self._in_sample_errors(values, covariates)
        return self

    def _in_sample_errors(self, values: np.ndarray, covariates: np.ndarray | None) -> np.ndarray:
        """Level-scale errors of forecasting ``horizon`` steps from every training origin: ``[S, H, F]``."""
        o = self.options
        first = (o["season"] or 0) + o["window"]
        errors = []
        for origin in range(first, len(values) - o["horizon"] + 1):
            past = None if covariates is None else covariates[:origin]
            future = None if covariates is None else covariates[origin: origin + o["horizon"]]
            errors.append(self.transform.level(values[origin: origin + o["horizon"]])
                          - self._forecast_levels(values[:origin], o["horizon"], past, future))
        return np.stack(errors)

    def _forecast_levels(self, history: np.ndarray, steps: int, covariates: np.ndarray | None = None,
                         future: np.ndarray | None = None, weight: float | None = None) -> np.ndarray:
        """``steps`` forecasts on the level scale: the network's, averaged with the drift forecast's with
        ``weight`` (default :attr:`benchmark_weight`) on the latter."""
        weight = self.benchmark_weight if weight is None else weight
        network = self._network_levels(history, steps, covariates, future)
        if weight == 0.0:
            return network
        return (1.0 - weight) * network + weight * self._drift_levels(history, steps)

    def _drift_levels(self, history: np.ndarray, steps: int) -> np.ndarray:
        """The (seasonal) naive forecast with the training series' drift, on the level scale (a model file
        from before the combination has no drift: estimated from ``history`` then)."""
        return drift_forecast(self.transform.level(history), steps, self.options["season"], drift=self.drift)

    def _network_levels(self, history: np.ndarray, steps: int, covariates: np.ndarray | None = None,
                        future: np.ndarray | None = None) -> np.ndarray:
        """``steps`` network forecasts on the level scale: blocks, each fed back as history for the next
        (with covariates, the ``future`` ones are appended as the history grows)."""
        window, season = self.options["window"], self.options["season"] or 0
        need = window + season  # the transform of the last `need` values gives the last `window` inputs
        blocks, done = [], 0
        while done < steps:
            tail = None if covariates is None else covariates[-need:]
            scaled = self._features(history[-need:], tail)[-window:]
            with torch.no_grad():
                out = self.network(torch.as_tensor(scaled[None], dtype=torch.float32))[0].double().numpy()
            block = self.transform.integrate(out, history[-max(season, 1):])  # only the last season is read
            blocks.append(block)
            done += len(block)
            history = np.concatenate([history, self.transform.unlevel(block)])
            if covariates is not None and done < steps:
                if future is None or len(future) < done:
                    raise ValueError(f"forecasting {steps} steps feeds forecasts back after step {done - len(block)}, "
                                     f"so it needs future_exogenous with at least {min(steps, done)} rows")
                covariates = np.concatenate([covariates, future[done - len(block): done]])
        return np.concatenate(blocks)[:steps]

    # ---------------------------------------------------------------- use
    def _check_fitted(self) -> None:
        if self.network is None:
            raise RuntimeError("this Forecaster is not fitted yet: call fit(series) or Forecaster.load(directory)")

    def predict(self, series, horizon: int | None = None, level: float | None = 0.9, interval: str = "residual",
                samples: int = 200, exogenous=None, future_exogenous=None) -> Forecast:
        """Forecast ``horizon`` steps (default: the configured horizon) after the end of ``series``.

        ``level`` (e.g. 0.9) adds a central interval; None for none. ``interval="residual"``: quantiles of the
        in-sample errors at each step (beyond the configured horizon, the last step's). ``interval="dropout"``:
        ``samples`` forecast paths with dropout on; the forecast is their mean, the interval their quantiles.
        A model fitted with covariates needs ``exogenous`` (one row per ``series`` value) and, when forecasts
        are fed back (recursive strategy, or beyond one block), ``future_exogenous`` for the steps ahead.
        """
        self._check_fitted()
        o = self.options
        values = as_series(series)
        if values.shape[1] != self.network.features:
            raise ValueError(f"series has {values.shape[1]} columns, the model was fitted on {self.network.features}")
        need = o["window"] + (o["season"] or 0)
        if len(values) < need:
            raise ValueError(f"series needs at least window + season = {need} values to forecast from, got {len(values)}")
        horizon = o["horizon"] if horizon is None else check_positive_int("horizon", horizon)
        check_choice("interval", interval, ("residual", "dropout"))
        covariates = self._exogenous(exogenous, len(values), "exogenous")
        future = None if future_exogenous is None else self._exogenous(future_exogenous, None, "future_exogenous")
        lower = upper = None
        if interval == "dropout":
            if not self._has_dropout():
                raise ValueError("interval='dropout' needs a model trained with dropout > 0 or recurrent_dropout > 0")
            self.network.train()  # dropout on: every path is one sample of the network
            try:
                paths = np.stack([self._forecast_levels(values, horizon, covariates, future)
                                  for _ in range(check_positive_int("samples", samples))])
            finally:
                self.network.eval()
            level_forecast = paths.mean(0)
            if level is not None:
                level = check_probability("level", level)
                low, high = np.quantile(paths, [(1 - level) / 2, (1 + level) / 2], axis=0)
                lower, upper = self.transform.unlevel(low), self.transform.unlevel(high)
        else:
            level_forecast = self._forecast_levels(values, horizon, covariates, future)
            if level is not None:
                level = check_probability("level", level)
                steps = np.minimum(np.arange(horizon), o["horizon"] - 1)
                low, high = np.quantile(self.errors, [(1 - level) / 2, (1 + level) / 2], axis=0)  # [H, F] each
                lower = self.transform.unlevel(level_forecast + low[steps])
                upper = self.transform.unlevel(level_forecast + high[steps])
        mean = self.transform.unlevel(level_forecast)
        squeeze = np.ndim(series) == 1
        pick = (lambda a: None if a is None else a[:, 0]) if squeeze else (lambda a: a)
        return Forecast(pick(mean), pick(lower), pick(upper), level)

    def _has_dropout(self) -> bool:
        o = self.options
        return o["dropout"] > 0 or o["layer_options"].get("recurrent_dropout", 0) > 0

    def evaluate(self, history, actual, level: float = 0.9, exogenous=None, future_exogenous=None) -> dict:
        """Forecast ``len(actual)`` steps after ``history`` and score them beside the naive and seasonal
        naive forecasts; ``coverage`` is the share of actual values inside the interval."""
        history, actual = as_series(history, "history"), as_series(actual, "actual")
        forecast = self.predict(history, len(actual), level, exogenous=exogenous, future_exogenous=future_exogenous)
        season = self.options["season"]
        report = {"model": forecast_metrics(actual, forecast.mean, history, season)}
        if self.benchmark_weight > 0:  # what the network alone, and the drift forecast alone, would have scored
            covariates = self._exogenous(exogenous, len(history), "exogenous")
            future = None if future_exogenous is None else self._exogenous(future_exogenous, None, "future_exogenous")
            alone = self._forecast_levels(history, len(actual), covariates, future, weight=0.0)
            report["network"] = forecast_metrics(actual, self.transform.unlevel(alone), history, season)
        report["drift"] = forecast_metrics(actual, self.transform.unlevel(self._drift_levels(history, len(actual))),
                                           history, season)
        report["naive"] = forecast_metrics(actual, naive_forecast(history, len(actual)), history, season)
        if season:
            report["seasonal_naive"] = forecast_metrics(
                actual, seasonal_naive_forecast(history, len(actual), season), history, season)
        report["coverage"] = float(np.mean((actual >= forecast.lower) & (actual <= forecast.upper)))
        return report

    def backtest(self, series, folds: int = 3, horizon: int | None = None, epochs: int = 200, level: float = 0.9,
                 exogenous=None, **training) -> dict:
        """Rolling-origin evaluation: for each of ``folds`` origins, ``horizon`` steps apart and ending at the
        end of ``series``, fit a fresh forecaster with these options on everything before the origin and
        score its next ``horizon`` steps. Returns ``{"folds": [report, ...], "mean": {forecast: {metric: value}}}``
        with each report as :meth:`evaluate` gives it. This forecaster itself is not changed.
        """
        values = as_series(series)
        folds = check_positive_int("folds", folds)
        horizon = self.options["horizon"] if horizon is None else check_positive_int("horizon", horizon)
        first_origin = len(values) - folds * horizon
        if first_origin < 2:
            raise ValueError(f"{folds} folds of {horizon} steps need more than {folds * horizon} values, got {len(values)}")
        reports = []
        for fold in range(folds):
            origin = first_origin + fold * horizon
            model = type(self)(**{k: v for k, v in self.options.items() if k != "layer_options"},
                               **self.options["layer_options"])
            past = None if exogenous is None else np.asarray(exogenous)[:origin]
            future = None if exogenous is None else np.asarray(exogenous)[origin: origin + horizon]
            model.fit(values[:origin], epochs=epochs, exogenous=past, **training)
            reports.append(model.evaluate(values[:origin], values[origin: origin + horizon], level, past, future))
        mean = {name: {metric: float(np.mean([r[name][metric] for r in reports])) for metric in reports[0][name]}
                for name in reports[0] if name != "coverage"}
        mean["coverage"] = float(np.mean([r["coverage"] for r in reports]))
        return {"folds": reports, "mean": mean}

    # ---------------------------------------------------------------- files
    def save(self, directory) -> None:
        """Write the model to ``directory`` (config.json + model.safetensors), atomically."""
        self._check_fitted()
        config = {"options": self.options, "features": self.network.features, "inputs": self.network.inputs,
                  "transform": self.transform.to_config(), "exogenous_scale": self.exogenous_scale, "drift": self.drift}
        weights = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        weights["errors"] = torch.as_tensor(self.errors)
        save_model(directory, TASK, config, weights)

    @classmethod
    def load(cls, directory) -> "Forecaster":
        """Read a model written by :meth:`save`; a file of another task or a damaged one is refused clearly."""
        config, weights = load_model(directory, TASK)
        try:
            options = dict(config["options"])
            if "drift" not in config:  # written before the drift combination existed: the network alone
                options["benchmark_weight"] = 0.0
            model = cls(**{k: v for k, v in options.items() if k != "layer_options"}, **options["layer_options"])
            model.transform = SeriesTransform(**config["transform"])
            model.drift = config.get("drift")
            model.exogenous_scale = config.get("exogenous_scale")
            model.network = model._build(int(config["features"]), int(config.get("inputs", config["features"])))
        except (KeyError, TypeError, ValueError) as error:
            from rnnkit.io import ModelFileError

            raise ModelFileError(f"{directory}: config.json does not describe a forecaster ({error!r})") from error
        check_state_dict(model.network, {k[len("network."):]: v for k, v in weights.items()
                                         if k.startswith("network.")}, directory)
        model.network.eval()
        model.errors = weights["errors"].double().numpy()
        return model
