"""Ready tasks with fit / predict / evaluate / save / load."""

from rnnkit.tasks.classifier import SequenceClassifier
from rnnkit.tasks.forecaster import Forecast, Forecaster

__all__ = ["Forecast", "Forecaster", "SequenceClassifier"]
