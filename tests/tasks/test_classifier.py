import numpy as np
import pytest

import rnnkit as rk
from rnnkit.data import ucr


def toy(count, seed):
    """Variable-length 2-feature sequences: class 'up' drifts upwards, class 'down' downwards."""
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for k in range(count):
        length = int(rng.integers(5, 20))
        direction = 1 if k % 2 else -1
        steps = rng.normal(0.3 * direction, 0.5, size=(length, 2))
        sequences.append(np.cumsum(steps, axis=0))
        labels.append("up" if direction > 0 else "down")
    return sequences, labels


@pytest.fixture(scope="module")
def fitted():
    x, y = toy(120, 0)
    return rk.SequenceClassifier(hidden_size=16, seed=0).fit(x, y, epochs=15, progress=False)


def test_learns_a_separable_task_and_reports_consistent_metrics(fitted):
    x, y = toy(200, 1)
    report = fitted.evaluate(x, y)
    confusion = np.array(report["confusion"])
    assert report["classes"] == ["down", "up"] and confusion.sum() == 200
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 200)
    assert report["accuracy"] > 0.9
    predicted = fitted.predict(x)
    assert np.mean([p == t for p, t in zip(predicted, y)]) == pytest.approx(report["accuracy"])


def test_padding_does_not_change_a_prediction(fitted):
    x, _ = toy(6, 2)
    together = fitted.predict_proba(x)
    alone = np.concatenate([fitted.predict_proba([s]) for s in x])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(together.sum(1), 1.0, atol=1e-6)


def test_save_and_load_give_identical_probabilities(fitted, tmp_path):
    x, _ = toy(10, 3)
    fitted.save(tmp_path / "clf")
    loaded = rk.SequenceClassifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(fitted.predict_proba(x), loaded.predict_proba(x))
    with pytest.raises(rk.io.ModelFileError, match="holds a 'sequence-classifier' model, not a 'forecaster'"):
        rk.Forecaster.load(tmp_path / "clf")


def test_bad_input_is_named(fitted):
    x, y = toy(4, 4)
    with pytest.raises(ValueError, match="labels \\['sideways'\\] were not seen in training"):
        fitted.evaluate(x, ["sideways"] * 4)
    with pytest.raises(ValueError, match="sequences have 3 features, the model was fitted on 2"):
        fitted.predict([np.zeros((5, 3))])
    with pytest.raises(ValueError, match="got 4 sequences but 3 labels"):
        rk.SequenceClassifier().fit(x, y[:3], progress=False)
    with pytest.raises(ValueError, match="need at least two classes"):
        rk.SequenceClassifier().fit(x, ["up"] * 4, progress=False)
    with pytest.raises(ValueError, match="mixes feature counts \\[1, 2\\]"):
        rk.SequenceClassifier().fit([np.zeros((3, 2)), np.zeros(4)], ["a", "b"], progress=False)


@pytest.mark.slow
@pytest.mark.skipif(ucr.aeon_data_directory() is None, reason="aeon (the datasets extra) is not installed")
def test_japanese_vowels_accuracy_bar():
    data = ucr.load_ucr("JapaneseVowels")
    clf = rk.SequenceClassifier(seed=0).fit(data.train_x, data.train_y, progress=False)
    assert clf.evaluate(data.test_x, data.test_y)["accuracy"] >= 0.97
