"""Ready tasks with fit / predict / evaluate / save / load."""

from rnnkit.tasks.classifier import SequenceClassifier
from rnnkit.tasks.forecaster import Forecast, Forecaster
from rnnkit.tasks.language_model import LanguageModel
from rnnkit.tasks.tagger import SequenceTagger
from rnnkit.tasks.translator import Seq2Seq

__all__ = ["Forecast", "Forecaster", "LanguageModel", "Seq2Seq", "SequenceClassifier", "SequenceTagger"]
