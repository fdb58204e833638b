"""Recurrent layers: stacking, bidirectional, lengths, dropout, state in and out, torch.nn interchange."""

from rnnkit.layers.recurrent import GRU, LSTM, RNN, SimpleRNN

__all__ = ["GRU", "LSTM", "RNN", "SimpleRNN"]
