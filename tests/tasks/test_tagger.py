import numpy as np
import pytest

import rnnkit as rk


def sentences(count, seed):
    """Tag a word X when the *next* word is 'the' (needs the future: bidirectional), else O."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "dog", "sat", "ran", "big"]
    tokens, tags = [], []
    for _ in range(count):
        row = list(rng.choice(words, size=int(rng.integers(3, 12))))
        tokens.append([str(w) for w in row])
        tags.append(["X" if i + 1 < len(row) and row[i + 1] == "the" else "O" for i in range(len(row))])
    return tokens, tags


@pytest.fixture(scope="module")
def tagger():
    tokens, tags = sentences(300, 0)
    return rk.SequenceTagger(hidden_size=16, embedding_dim=8, seed=0).fit(tokens, tags, epochs=15, progress=False)


def test_learns_a_tag_that_depends_on_the_next_word(tagger):
    tokens, tags = sentences(200, 1)
    report = tagger.evaluate(tokens, tags)
    assert report["classes"] == ["O", "X"] and report["accuracy"] > 0.98
    steps = sum(len(t) for t in tags)
    assert np.array(report["confusion"]).sum() == steps  # padding is never counted
    predicted = tagger.predict(tokens)
    assert [len(p) for p in predicted] == [len(t) for t in tokens]


def test_padding_does_not_change_a_tag_probability(tagger):
    tokens, _ = sentences(5, 2)
    together = tagger.predict_proba(tokens)
    for row, probabilities in zip(tokens, together):
        np.testing.assert_allclose(probabilities, tagger.predict_proba([row])[0], atol=1e-6)


def test_save_load_and_unknown_words(tagger, tmp_path):
    tokens, _ = sentences(10, 3)
    tagger.save(tmp_path / "tagger")
    loaded = rk.SequenceTagger.load(tmp_path / "tagger")
    for a, b in zip(tagger.predict_proba(tokens), loaded.predict_proba(tokens)):
        np.testing.assert_array_equal(a, b)
    assert len(loaded.predict([["zebra", "sat", "the", "cat"]])[0]) == 4  # zebra -> <unk>


def test_frame_tagging_on_numeric_sequences():
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(int(rng.integers(4, 15)), 1)) for _ in range(200)]
    labels = [["up" if t and f[t, 0] > f[t - 1, 0] else "flat" for t in range(len(f))] for f in frames]
    tagger = rk.SequenceTagger(hidden_size=16, seed=0).fit(frames, labels, epochs=20, progress=False)
    assert tagger.evaluate(frames, labels)["accuracy"] > 0.9


def test_bad_input_is_named(tagger):
    tokens, tags = sentences(3, 4)
    with pytest.raises(ValueError, match="tags\\[1\\] has 1 tags for .* steps; give one tag per step"):
        tagger.evaluate(tokens, [tags[0], ["O"], tags[2]])
    with pytest.raises(ValueError, match="labels \\['VERB'\\] were not seen in training"):
        tagger.evaluate(tokens[:1], [["VERB"] * len(tokens[0])])
    with pytest.raises(ValueError, match="got 3 sequences but 2 tag sequences"):
        rk.SequenceTagger().fit(tokens, tags[:2], progress=False)
