"""rnnkit: recurrent neural networks on PyTorch — cells, layers, engines and tasks."""

from rnnkit import data, training
from rnnkit.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell
from rnnkit.layers import GRU, LSTM, RNN, SimpleRNN

__version__ = "0.1.0"

__all__ = ["data", "training", "GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RecurrentCell", "SimpleRNN", "SimpleRNNCell", "__version__"]
