"""rnnkit: recurrent neural networks on PyTorch — cells, layers, engines and tasks."""

from rnnkit import data, io, training
from rnnkit.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell
from rnnkit.layers import GRU, LSTM, RNN, SimpleRNN

__version__ = "0.1.0"

__all__ = ["data", "io", "training", "Forecaster", "LanguageModel", "Seq2Seq", "SequenceClassifier", "SequenceTagger", "GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RecurrentCell", "SimpleRNN", "SimpleRNNCell", "__version__"]


def __getattr__(name: str):
    """Tasks import Lightning, which takes seconds: load them on first use, not with the package."""
    if name in ("Forecaster", "Forecast", "LanguageModel", "Seq2Seq", "SequenceClassifier", "SequenceTagger"):
        from rnnkit import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
