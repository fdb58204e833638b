"""Recurrent cells: one time step each, parameters laid out like torch.nn."""

from rnnkit.cells.base import RecurrentCell, SequenceNoise, StepNoise
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.simple import SimpleRNNCell

CELLS = {"rnn": SimpleRNNCell, "simple": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}


def is_built_in(cell: RecurrentCell) -> bool:
    """Whether ``cell`` is one of rnnkit's own cells and not a subclass, whose step may differ: the engines that do
    not call the cell's step (fused, native) compute these only."""
    return type(cell) in (SimpleRNNCell, LSTMCell, GRUCell)


__all__ = ["CELLS", "GRUCell", "LSTMCell", "RecurrentCell", "SequenceNoise", "SimpleRNNCell", "StepNoise",
           "is_built_in"]
