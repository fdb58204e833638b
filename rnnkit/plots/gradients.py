"""Figures for gradient diagnostics: gradient flow through time and learning curves."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, not windows: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rnnkit.diagnostics.flow import GradientFlow  # noqa: E402
from rnnkit.io import atomic_file  # noqa: E402


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` to ``path`` (format from the suffix) via a temporary file and a rename."""
    path = Path(path)
    with atomic_file(path, suffix=path.suffix) as temporary:
        figure.savefig(temporary, dpi=120, bbox_inches="tight")
    return path


def plot_gradient_flow(flows: dict[str, GradientFlow], path=None, title: str | None = None) -> Figure:
    """||dL/dh_t|| against t (log scale), one line per model and recurrent layer/direction."""
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, flow in flows.items():
        for name, norms in flow.step_norms.items():
            line = label if len(flow.step_norms) == 1 else f"{label} {name}"
            values = norms.clamp(min=1e-30).numpy()
            axes.semilogy(range(1, len(values) + 1), values, label=line)
    return _finish(figure, axes, "time step t", "||dL/dh_t||", title or "Gradient flow through time", path)


def plot_learning_curves(curves: dict[str, list[tuple[int, float]]], baseline: float | None = None, path=None,
                         title: str | None = None, ylabel: str = "test MSE") -> Figure:
    """Test loss against training step for each model, with the trivial baseline as a dashed line."""
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        steps, values = zip(*curve)
        axes.semilogy(steps, values, label=label)
    if baseline is not None:
        axes.axhline(baseline, color="gray", linestyle="--", label="trivial baseline")
    return _finish(figure, axes, "training step", ylabel, title or "Learning curves", path)


def plot_perplexity(curves: dict[str, list[tuple[int, float]]], path=None, title: str = "Perplexity") -> Figure:
    """Perplexity (exp of the mean negative log-likelihood) per epoch, from the ``train_loss`` / ``val_loss``
    curves of :func:`rnnkit.training.logs.read_training_log` for a language model."""
    import math

    picked = {name: [(epoch, math.exp(loss)) for epoch, loss in curves[name]]
              for name in ("train_loss", "val_loss") if name in curves}
    if not picked:
        raise ValueError(f"no train_loss or val_loss curve among {sorted(curves)}")
    return plot_learning_curves(picked, path=path, title=title, ylabel="perplexity")


def _finish(figure: Figure, axes, xlabel: str, ylabel: str, title: str, path) -> Figure:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path)
    return figure
