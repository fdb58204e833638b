"""The long-dependency experiments, at a size CI can afford (seconds)."""

from pathlib import Path

from typer.testing import CliRunner

from rnnkit.cli import app
from rnnkit.data import AddingTask
from rnnkit.diagnostics import experiments


def test_lstm_solves_adding_at_T50_while_tanh_rnn_gradients_vanish():
    task = AddingTask(50)
    lstm = experiments.train_model("lstm", experiments.ADDING_MODELS["lstm"], task, steps=1500, batch=64, hidden=32,
                              seed=0, eval_every=50, stop_below=0.01, progress=None)
    assert lstm.final_mse < 0.05 < task.baseline_mse
    assert lstm.steps_to_solve is not None
    rnn = experiments.train_model("rnn", experiments.ADDING_MODELS["rnn-tanh (torch init)"], task, steps=1, batch=64,
                             hidden=32, seed=0, eval_every=1, stop_below=0.0, progress=None)
    norms = rnn.flow.step_norms["rnn/l0/forward"]
    assert norms[0] < 1e-3 * norms[-1]  # orders of magnitude smaller at t=1 than at t=T
    assert rnn.vanishing_ratio < 1e-3


def test_clipping_by_norm_tames_exploding_gradients():
    results = {r.name: r for r in experiments.run_exploding(50, steps=300, hidden=64)}
    unclipped, clipped = results["irnn, no clipping"], results["irnn, clip by norm 1.0"]
    assert unclipped.max_gradient_norm > 1e3  # the gradients do explode
    assert clipped.final_mse < 0.05 < unclipped.final_mse


def test_diagnose_command_writes_a_report(tmp_path: Path):
    result = CliRunner().invoke(app, ["diagnose", "--length", "8", "--steps", "20", "--models", "lstm,rnn-tanh",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "| lstm |" in report and "| rnn-tanh |" in report
    for figure in ("gradient_flow.png", "gradient_flow_trained.png", "learning_curves.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_diagnose_names_an_unknown_model(tmp_path: Path):
    result = CliRunner().invoke(app, ["diagnose", "--models", "transformer", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown model 'transformer'" in result.output
