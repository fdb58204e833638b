import numpy as np
import pytest

from rnnkit.data.series import SeriesTransform, as_series, load_airline, read_csv_column, windows
from rnnkit.data.ucr import package_directory


def test_airline_series_is_the_classic_one():
    dates, values = load_airline()
    assert len(values) == 144 and dates[0] == "1949-01" and dates[-1] == "1960-12"
    assert values[:3].tolist() == [112, 118, 132] and values[-1] == 432 and values.sum() == 40363


@pytest.mark.parametrize(("log", "season"), [(True, 12), (False, 12), (True, None), (False, None)])
def test_transform_inverse_recovers_the_series(log, season):
    rng = np.random.default_rng(0)
    series = as_series(100 + np.cumsum(rng.random(60)) + 10 * np.sin(np.arange(60) / 2))
    history, future = series[:48], series[48:]
    transform = SeriesTransform.fit(history, log=log, season=season)
    scaled_future = transform.forward(series)[-12:]  # the true future, transformed
    np.testing.assert_allclose(transform.inverse(scaled_future, history), future, rtol=1e-12)


def test_statistics_come_from_the_training_data_only():
    train = as_series(np.arange(1.0, 31.0))
    transform = SeriesTransform.fit(train, log=False, season=None)
    assert transform.mean == [15.5] and transform.std == pytest.approx([np.std(np.arange(1.0, 31.0))])
    longer = as_series(np.arange(1.0, 61.0))
    assert transform.forward(longer)[0, 0] == pytest.approx((1 - 15.5) / transform.std[0])


def test_log_auto_follows_positivity():
    assert SeriesTransform.fit(as_series([1.0, 2.0, 4.0, 3.0])).log
    assert not SeriesTransform.fit(as_series([-1.0, 2.0, 4.0, 3.0])).log


def test_windows_pair_inputs_with_the_steps_that_follow():
    scaled = np.arange(10.0)[:, None]
    inputs, targets = windows(scaled, 3, 2)
    assert inputs.shape == (6, 3, 1) and targets.shape == (6, 2, 1)
    assert inputs[2, :, 0].tolist() == [2, 3, 4] and targets[2, :, 0].tolist() == [5, 6]


@pytest.mark.parametrize(("values", "message"), [
    ([1.0, float("nan"), 2.0], "contains NaN or infinite values \\(first at index 1\\)"),
    ([], "must be a non-empty"),
])
def test_bad_series(values, message):
    with pytest.raises(ValueError, match=message):
        as_series(values)


def test_constant_and_short_series_are_refused():
    with pytest.raises(ValueError, match="constant after the transform"):
        SeriesTransform.fit(as_series(np.full(30, 5.0)))
    with pytest.raises(ValueError, match="too short: .* window=12 \\+ horizon=12 need at least 24"):
        windows(np.zeros((20, 1)), 12, 12)
    with pytest.raises(ValueError, match="log=True needs a positive series"):
        SeriesTransform.fit(as_series([1.0, -2.0, 3.0]), log=True)


def test_csv_column_errors_name_the_problem(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("month,sales\n1,10\n2,x\n")
    with pytest.raises(ValueError, match="has no column 'units'; its columns are \\['month', 'sales'\\]"):
        read_csv_column(path, "units")
    with pytest.raises(ValueError, match="line 3: sales='x' is not a number"):
        read_csv_column(path, "sales")
    with pytest.raises(FileNotFoundError, match="no CSV file at"):
        read_csv_column(tmp_path / "missing.csv", "sales")


@pytest.mark.skipif(package_directory("statsmodels") is None, reason="statsmodels (the datasets extra) is not installed")
def test_statsmodels_series():
    from rnnkit.data.series import load_statsmodels

    years, sunspots = load_statsmodels("sunspots")
    assert (years[0], years[-1], len(sunspots), sunspots[0]) == ("1700", "2008", 309, 5.0)
    months, elnino = load_statsmodels("elnino")
    assert (months[0], months[-1], len(elnino), elnino[0]) == ("1950-01", "2010-12", 732, 23.11)
    _, co2 = load_statsmodels("co2")
    assert len(co2) == 2284 and np.isfinite(co2).all()
    with pytest.raises(ValueError, match="unknown statsmodels series 'tides'"):
        load_statsmodels("tides")
