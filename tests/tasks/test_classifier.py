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


def toy_texts(count, seed):
    rng = np.random.default_rng(seed)
    good, bad, filler = ["great", "superb", "lovely"], ["awful", "dull", "boring"], ["the", "film", "was", "plot"]
    texts, labels = [], []
    for k in range(count):
        positive = k % 2 == 0
        words = list(rng.choice(filler, size=int(rng.integers(3, 8))))
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(good if positive else bad)))
        texts.append(" ".join(words))
        labels.append("pos" if positive else "neg")
    return texts, labels


def test_text_classification_with_a_vocabulary(tmp_path):
    texts, labels = toy_texts(200, 0)
    clf = rk.SequenceClassifier(hidden_size=16, embedding_dim=8, seed=0).fit(texts, labels, epochs=15, progress=False)
    assert clf.vocabulary.tokens[:4] == ["<pad>", "<unk>", "<go>", "<eos>"]
    test_texts, test_labels = toy_texts(100, 1)
    assert clf.evaluate(test_texts, test_labels)["accuracy"] > 0.95
    clf.save(tmp_path / "text")
    loaded = rk.SequenceClassifier.load(tmp_path / "text")
    np.testing.assert_array_equal(clf.predict_proba(test_texts), loaded.predict_proba(test_texts))
    assert loaded.predict(["an unseen zebra was great"]) == clf.predict(["an unseen zebra was great"])
    with pytest.raises(ValueError, match="has no tokens"):
        clf.predict(["   "])
    with pytest.raises(TypeError, match="fitted on texts, so it needs a list of strings"):
        clf.predict([np.zeros((3, 2))])
