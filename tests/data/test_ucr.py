import numpy as np
import pytest

from rnnkit.data import ucr


def test_reads_the_ts_format_with_variable_lengths(tmp_path):
    path = tmp_path / "toy.ts"
    path.write_text("# comment\n@problemName toy\n@classLabel true a b\n@data\n"
                    "1,2,3:4,5,6:a\n7,8:9,10:b\n")
    sequences, labels = ucr.read_ts(path)
    assert labels == ["a", "b"]
    np.testing.assert_array_equal(sequences[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(sequences[1], [[7, 9], [8, 10]])


def test_malformed_lines_are_named(tmp_path):
    path = tmp_path / "bad.ts"
    path.write_text("@data\n1,2:3:a\n")
    with pytest.raises(ValueError, match="line 2: dimensions of different lengths"):
        ucr.read_ts(path)


def test_unknown_name_and_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="unknown data set 'Iris'; available: JapaneseVowels"):
        ucr.load_ucr("Iris")
    monkeypatch.setattr(ucr, "aeon_data_directory", lambda: None)
    with pytest.raises(ucr.DatasetUnavailable, match="pip install 'rnnkit\\[datasets\\]'"):
        ucr.load_ucr("GunPoint")
    assert all(why is not None for name, _, why in ucr.available_datasets() if name in ucr.AEON_DATASETS)


@pytest.mark.skipif(ucr.aeon_data_directory() is None, reason="aeon (the datasets extra) is not installed")
def test_japanese_vowels_official_split():
    data = ucr.load_ucr("JapaneseVowels")
    assert (len(data.train_x), len(data.test_x)) == (270, 370)
    assert {s.shape[1] for s in data.train_x} == {12}
    lengths = [len(s) for s in data.train_x + data.test_x]
    assert (min(lengths), max(lengths)) == (7, 29)
    assert sorted(set(data.train_y)) == [str(k) for k in range(1, 10)]
