import numpy as np
import pytest

from rnnkit.tasks.metrics import drift_forecast, forecast_metrics, naive_forecast, seasonal_naive_forecast


def test_metrics_against_hand_computed_values():
    actual, forecast = np.array([100.0, 200.0]), np.array([110.0, 180.0])
    history = np.array([1.0, 3.0, 6.0])  # lag-1 MAE = (2 + 3) / 2 = 2.5
    m = forecast_metrics(actual, forecast, history)
    assert m["MAE"] == 15.0
    assert m["RMSE"] == pytest.approx(np.sqrt((100 + 400) / 2))
    assert m["MAPE"] == pytest.approx(100 * (0.1 + 0.1) / 2)
    assert m["sMAPE"] == pytest.approx(100 * (20 / 210 + 40 / 380) / 2)
    assert m["MASE"] == pytest.approx(15.0 / 2.5)


def test_baselines():
    history = np.arange(1.0, 25.0)
    assert naive_forecast(history, 3).tolist() == [24, 24, 24]
    assert seasonal_naive_forecast(history, 14, 12).tolist() == list(range(13, 25)) + [13, 14]


def test_drift_forecasts_continue_a_line_and_a_growing_season_exactly():
    line = 3.0 + 2.0 * np.arange(20)  # naive with drift extends a straight line
    np.testing.assert_allclose(drift_forecast(line, 5), 3.0 + 2.0 * np.arange(20, 25))
    t = np.arange(60 + 30)
    season = 1.0 + 0.5 * np.sin(2 * np.pi * t / 12)
    growing = 100.0 * season * 1.1 ** (t / 12)  # a fixed seasonal shape growing 10% a year
    forecast = drift_forecast(growing[:60], 30, season=12, log=True)
    np.testing.assert_allclose(forecast, growing[60:], rtol=1e-12)
    both = drift_forecast(np.stack([line, 2 * line], axis=1), 4)  # one drift per column
    steps = np.arange(1, 5)
    np.testing.assert_allclose(both, np.stack([line[-1] + 2.0 * steps, 2 * line[-1] + 4.0 * steps], 1))


def test_drift_forecast_bad_input_is_named():
    with pytest.raises(ValueError, match="needs more than season=12 values, got 12"):
        drift_forecast(np.ones(12), 3, season=12)
    with pytest.raises(ValueError, match="log=True needs a positive history, got minimum -1"):
        drift_forecast(np.array([1.0, -1.0, 2.0]), 3, log=True)
