import pytest

from rnnkit.data.text import EOS, SPECIALS, Vocabulary, tokenize


def test_word_and_char_tokens():
    assert tokenize("Don't panic, it's FINE!") == ["don't", "panic", ",", "it's", "fine", "!"]
    assert tokenize("ab c", "char") == ["a", "b", " ", "c"]


def test_vocabulary_orders_by_frequency_and_maps_unknowns():
    vocabulary = Vocabulary.build(["b a b", "c b a"], min_count=1)
    assert vocabulary.tokens == [*SPECIALS, "b", "a", "c"]
    assert vocabulary.encode("a b zebra") == [5, 4, 1]  # zebra -> <unk>
    assert vocabulary.encode("a", add_eos=True) == [5, vocabulary.tokens.index(EOS)]
    assert vocabulary.decode([2, 4, 5, 3, 6]) == "b a"  # <go> skipped, stops at <eos>


def test_min_count_and_max_size():
    vocabulary = Vocabulary.build(["a a a b b c"], min_count=2)
    assert vocabulary.tokens[4:] == ["a", "b"]
    assert Vocabulary.build(["a a a b b c"], max_size=5).tokens[4:] == ["a"]


def test_character_round_trip_and_bad_arguments():
    vocabulary = Vocabulary.build(["hello"], level="char")
    assert vocabulary.decode(vocabulary.encode("hole")) == "hole"
    with pytest.raises(ValueError, match="level must be one of 'word', 'char', 'space'; got 'byte'"):
        Vocabulary.build(["x"], level="byte")
    with pytest.raises(TypeError, match="text must be a str, got int"):
        tokenize(5)


def test_read_tagged_sentences(tmp_path):
    from rnnkit.data.text import read_tagged

    path = tmp_path / "t.tsv"
    path.write_text("the\tD\ncat\tN\n\n\nsat\tV\n")
    assert read_tagged(path) == ([["the", "cat"], ["sat"]], [["D", "N"], ["V"]])
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no tagged sentences"):
        read_tagged(path)
