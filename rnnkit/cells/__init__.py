"""Recurrent cells: one time step each, parameters laid out like torch.nn."""

from rnnkit.cells.base import RecurrentCell, SequenceNoise, StepNoise
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.simple import SimpleRNNCell

CELLS = {"rnn": SimpleRNNCell, "simple": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}

__all__ = ["CELLS", "GRUCell", "LSTMCell", "RecurrentCell", "SequenceNoise", "SimpleRNNCell", "StepNoise"]
