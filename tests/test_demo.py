from typer.testing import CliRunner

from rnnkit.cli import app
from rnnkit.demo import run_demo


def test_demo_beats_the_naive_forecast():
    result = run_demo(epochs=3, show_progress=False)
    assert result.model_mse < 0.5 * result.naive_mse


def test_demo_command_reports_both_errors():
    result = CliRunner().invoke(app, ["demo", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "LSTM one-step forecast, test MSE" in result.output
    assert "naive (last value) forecast, test MSE" in result.output
