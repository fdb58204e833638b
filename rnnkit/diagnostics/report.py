"""Written reports of the long-dependency experiments (Markdown + figures, written atomically)."""

from __future__ import annotations

from pathlib import Path

from rnnkit.diagnostics.experiments import SOLVED_BELOW, RunResult
from rnnkit.io import atomic_write_text
from rnnkit.plots import plot_gradient_flow, plot_learning_curves

BASELINE = 1.0 / 6.0  # the adding problem's trivial MSE


def write_adding_report(results: list[RunResult], length: int, steps: int, out_dir) -> Path:
    out = Path(out_dir)
    flows = {r.name: r.flow for r in results}
    plot_gradient_flow(flows, out / "gradient_flow.png",
                       title=f"Adding problem, T={length}: ||dL/dh_t|| at initialisation")
    plot_gradient_flow({r.name: r.trained_flow for r in results}, out / "gradient_flow_trained.png",
                       title=f"Adding problem, T={length}: ||dL/dh_t|| after training")
    plot_learning_curves({r.name: r.curve for r in results}, BASELINE, out / "learning_curves.png",
                         title=f"Adding problem, T={length}")
    lines = [f"# Adding problem, T = {length}", "",
             f"Trivial baseline (always answer 1): MSE {BASELINE:.3f}. Solved: test MSE < {SOLVED_BELOW}. "
             f"Budget: {steps} steps of 64 sequences, Adam; a model stops once its test MSE < 0.005.", "",
             "| model | final test MSE | steps to solve | ||dL/dh_1|| / ||dL/dh_T||, init | same, trained | seconds "
             "| verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        solved = "—" if r.steps_to_solve is None else str(r.steps_to_solve)
        lines.append(f"| {r.name} | {r.final_mse:.4f} | {solved} | {r.vanishing_ratio:.1e} | {r.trained_ratio:.1e} | "
                     f"{r.seconds:.1f} | {r.verdict(BASELINE)} |")
    lines += ["", "![gradient flow at initialisation](gradient_flow.png)", "",
              "![gradient flow after training](gradient_flow_trained.png)", "",
              "![learning curves](learning_curves.png)", ""]
    return atomic_write_text(out / "report.md", "\n".join(lines))


def write_exploding_report(results: list[RunResult], length: int, out_dir) -> Path:
    out = Path(out_dir)
    plot_learning_curves({r.name: r.curve for r in results}, BASELINE, out / "exploding_curves.png",
                         title=f"Exploding gradients, adding problem T={length}")
    lines = [f"# Exploding gradients, T = {length}", "",
             "| run | max gradient norm (before clipping) | steps skipped (non-finite) | final test MSE | verdict |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.max_gradient_norm:.2e} | {r.nonfinite_steps} | {r.final_mse:.4g} | "
                     f"{r.verdict(BASELINE)} |")
    lines += ["", "![learning curves](exploding_curves.png)", ""]
    return atomic_write_text(out / "exploding.md", "\n".join(lines))
