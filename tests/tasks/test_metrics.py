import numpy as np
import pytest

from rnnkit.tasks.metrics import forecast_metrics, naive_forecast, seasonal_naive_forecast


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
