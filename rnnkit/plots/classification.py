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
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, column), count in np.ndenumerate(confusion):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black", fontsize=8)
    return _label_heatmap(figure, axes, image, (classes, "predicted"), (classes, "true"), title, path, rotate=True)


def plot_attention(weights, source_tokens, target_tokens, title: str = "Attention", path=None) -> Figure:
    """A heatmap of attention weights: one row per target token, one column per source token."""
    weights = np.asarray(weights, dtype=float)
    figure, axes = plt.subplots(figsize=(max(3.0, 0.45 * len(source_tokens) + 1.5),
                                         max(3.0, 0.4 * len(target_tokens) + 1.2)))
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    return _label_heatmap(figure, axes, image, (source_tokens, "source"), (target_tokens, "output"), title, path)


def _label_heatmap(figure: Figure, axes, image, columns, rows, title: str, path, rotate: bool = False) -> Figure:
    """Tick labels and axis names (``(labels, name)`` for columns and rows), title, colour bar, file."""
    (column_labels, column_name), (row_labels, row_name) = columns, rows
    axes.set_xticks(range(len(column_labels)), column_labels, **({"rotation": 45, "ha": "right"} if rotate else {}))
    axes.set_yticks(range(len(row_labels)), row_labels)
    axes.set_xlabel(column_name)
    axes.set_ylabel(row_name)
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path)
    return figure
