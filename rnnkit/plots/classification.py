"""Classification figures."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from rnnkit.plots.gradients import plt, save_figure


def plot_confusion_matrix(confusion, classes, title: str = "Confusion matrix", path=None) -> Figure:
    """Counts of (true class, predicted class), with the counts written in the cells."""
    confusion = np.asarray(confusion)
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(confusion, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, column), count in np.ndenumerate(confusion):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black", fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_attention(weights, source_tokens, target_tokens, title: str = "Attention", path=None) -> Figure:
    """A heatmap of attention weights: one row per target token, one column per source token."""
    weights = np.asarray(weights, dtype=float)
    figure, axes = plt.subplots(figsize=(max(3.0, 0.45 * len(source_tokens) + 1.5),
                                         max(3.0, 0.4 * len(target_tokens) + 1.2)))
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(source_tokens)), source_tokens)
    axes.set_yticks(range(len(target_tokens)), target_tokens)
    axes.set_xlabel("source")
    axes.set_ylabel("output")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path)
    return figure
