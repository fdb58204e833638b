from pathlib import Path

from typer.testing import CliRunner

from rnnkit.cli import app


def test_demo_command_reports_the_model_beside_the_baselines(tmp_path: Path):
    result = CliRunner().invoke(app, ["demo", "--epochs", "30", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for row in ("model (average of:)", "network alone", "seasonal naive + drift", "seasonal naive", "naive"):
        assert row in result.output
    assert "15.52" in result.output and "3.01" in result.output  # seasonal naive's MAPE, and with drift
    assert (tmp_path / "airline-model" / "model.safetensors").is_file()
    assert (tmp_path / "airline-forecast.png").read_bytes()[:4] == b"\x89PNG"


def test_forecast_command_on_a_csv(tmp_path: Path):
    rows = "\n".join(f"{t},{10 + (t % 12) + t / 10:.3f}" for t in range(60))
    data = tmp_path / "sales.csv"
    data.write_text("month,units\n" + rows + "\n")
    result = CliRunner().invoke(app, ["forecast", str(data), "--column", "units", "--horizon", "6", "--season", "12",
                                      "--epochs", "5", "--plot", str(tmp_path / "f.png"), "--save", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "forecast of the next 6 steps" in result.output
    assert (tmp_path / "f.png").is_file() and (tmp_path / "m" / "config.json").is_file()


def test_forecast_command_names_a_missing_column(tmp_path: Path):
    data = tmp_path / "sales.csv"
    data.write_text("month,units\n1,2\n")
    result = CliRunner().invoke(app, ["forecast", str(data), "--column", "revenue"])
    assert result.exit_code == 2
    assert "no column 'revenue'" in result.output


def test_datasets_command_says_what_is_available(monkeypatch):
    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 0 and "airline" in result.output and "JapaneseVowels" in result.output
    from rnnkit.data import ucr

    monkeypatch.setattr(ucr, "aeon_data_directory", lambda: None)
    result = CliRunner().invoke(app, ["datasets"])
    assert "needs aeon" in result.output


def test_classify_command(tmp_path: Path):
    import pytest

    from rnnkit.data import ucr

    if ucr.aeon_data_directory() is None:
        pytest.skip("aeon (the datasets extra) is not installed")
    result = CliRunner().invoke(app, ["classify", "--dataset", "ItalyPowerDemand", "--epochs", "3", "--hidden", "8",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "67 training / 1029 test sequences, 2 classes" in result.output and "test accuracy" in result.output
    assert (tmp_path / "ItalyPowerDemand-confusion.png").is_file()
    assert CliRunner().invoke(app, ["classify", "--dataset", "Iris"]).exit_code == 2


def test_tag_command_trains_and_scores(tmp_path: Path):
    import numpy as np

    rng = np.random.default_rng(0)
    lines = []
    for _ in range(60):
        words = list(rng.choice(["the", "cat", "dog", "sat"], size=5))
        lines += [f"{w}\t{'D' if w == 'the' else 'W'}" for w in words] + [""]
    (tmp_path / "train.tsv").write_text("\n".join(lines))
    (tmp_path / "test.tsv").write_text("\n".join(lines[:60]))
    result = CliRunner().invoke(app, ["tag", str(tmp_path / "train.tsv"), "--test", str(tmp_path / "test.tsv"),
                                      "--epochs", "5", "--hidden", "8", "--save", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "trained on 60 sentences, 300 tokens" in result.output and "per-token accuracy" in result.output
    assert (tmp_path / "m" / "config.json").is_file()


def test_tag_command_names_a_malformed_line(tmp_path: Path):
    (tmp_path / "bad.tsv").write_text("the\tD\ncat W\n")
    result = CliRunner().invoke(app, ["tag", str(tmp_path / "bad.tsv")], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "line 2: expected 'token<TAB>tag'" in result.output


def test_predict_command_uses_any_saved_model(tmp_path: Path):
    import rnnkit as rk
    from rnnkit.data.series import load_airline

    _, passengers = load_airline()
    rk.Forecaster(season=12).fit(passengers, epochs=3, progress=False).save(tmp_path / "fc")
    (tmp_path / "air.csv").write_text("y\n" + "\n".join(str(v) for v in passengers) + "\n")
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "fc"), "--csv", str(tmp_path / "air.csv"),
                                      "--column", "y", "--horizon", "3"])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.output.strip().splitlines()] == ["1", "2", "3"]

    texts = ["good fun film", "bad dull film", "good story", "dull plot"] * 10
    labels = ["pos", "neg", "pos", "neg"] * 10
    rk.SequenceClassifier(hidden_size=8).fit(texts, labels, epochs=2, progress=False).save(tmp_path / "clf")
    (tmp_path / "new.txt").write_text("good film\n\nbad plot\n")
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "clf"), "--text", str(tmp_path / "new.txt")])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[1] for line in result.output.strip().splitlines()] == ["good film", "bad plot"]

    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "clf")], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "needs --text FILE" in result.output
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path)], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "config.json is missing" in result.output


def test_forecast_command_on_a_known_series():
    from rnnkit.data.ucr import package_directory

    result = CliRunner().invoke(app, ["forecast", "--dataset", "airline", "--horizon", "2", "--season", "12",
                                      "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "forecast of the next 2 steps" in result.output
    if package_directory("statsmodels") is not None:
        result = CliRunner().invoke(app, ["forecast", "--dataset", "nile", "--horizon", "2", "--epochs", "2"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["forecast", "--dataset", "airline", "--season", "12", "--benchmark-weight", "2"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "a number in [0, 1] or auto, got '2'" in result.output
    result = CliRunner().invoke(app, ["forecast", "--dataset", "tides"], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "unknown statsmodels series 'tides'" in result.output
    assert CliRunner().invoke(app, ["forecast"]).exit_code == 2


def test_generate_command_trains_saves_and_reloads(tmp_path: Path):
    (tmp_path / "corpus.txt").write_text("to be or not to be. " * 30)
    result = CliRunner().invoke(app, ["generate", "--train", str(tmp_path / "corpus.txt"), "--prime", "to ",
                                      "--length", "20", "--epochs", "2", "--hidden", "16", "--save", str(tmp_path / "lm")])
    assert result.exit_code == 0, result.output
    generated = [line for line in result.output.splitlines() if line.startswith("to ")]
    assert len(generated) == 1 and "<unk>" not in generated[0]
    assert (tmp_path / "lm" / "model.safetensors").is_file()
    again = CliRunner().invoke(app, ["generate", "--model", str(tmp_path / "lm"), "--prime", "to ", "--length", "20"])
    assert again.exit_code == 0 and again.output.splitlines()[0] == generated[0]  # same model and seed, same text
    bad = CliRunner().invoke(app, ["generate", "--model", str(tmp_path / "lm"), "--prime", "to ", "--temperature", "0"],
                             env={"COLUMNS": "400"})
    assert bad.exit_code == 2 and "temperature must be > 0" in bad.output
    assert CliRunner().invoke(app, ["generate"]).exit_code == 2


def test_translate_command_trains_translates_and_draws_attention(tmp_path: Path):
    lines = [f"{w}\t{' '.join(c.upper() for c in w)}" for w in ["ab", "ba", "abc", "cab", "bca", "cc", "aab"] * 8]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["translate", "--train", str(tmp_path / "pairs.tsv"), "--epochs", "2",
                                      "--hidden", "16", "--input", "abc", "--beam", "2", "--save", str(tmp_path / "m"),
                                      "--heatmap", str(tmp_path / "attention.png")])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("abc\t") for line in result.output.splitlines())
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "m" / "config.json").is_file()
    again = CliRunner().invoke(app, ["translate", "--model", str(tmp_path / "m"), "--input", "abc", "--beam", "2"])
    assert again.exit_code == 0 and [l for l in result.output.splitlines() if l.startswith("abc\t")] == \
        [l for l in again.output.splitlines() if l.startswith("abc\t")]
    (tmp_path / "bad.tsv").write_text("abc ABC\n")
    bad = CliRunner().invoke(app, ["translate", "--train", str(tmp_path / "bad.tsv")], env={"COLUMNS": "400"})
    assert bad.exit_code == 2 and "line 1: expected 'source<TAB>target'" in bad.output
