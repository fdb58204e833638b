"""matplotlib figures. Every function returns the Figure and, given a path, writes it atomically."""

from rnnkit.plots.classification import plot_attention, plot_confusion_matrix
from rnnkit.plots.forecast import plot_forecast
from rnnkit.plots.gradients import plot_gradient_flow, plot_learning_curves, plot_perplexity, save_figure

__all__ = ["plot_attention", "plot_confusion_matrix", "plot_forecast", "plot_gradient_flow", "plot_learning_curves", "plot_perplexity", "save_figure"]
