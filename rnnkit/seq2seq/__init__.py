"""Attention and encoder-decoders: teacher forcing, greedy decoding and beam search."""

from rnnkit.seq2seq.attention import Attention
from rnnkit.seq2seq.conditioned import VectorToSequence
from rnnkit.seq2seq.model import EOS, GO, PAD, Decoder, Seq2SeqNetwork

__all__ = ["EOS", "GO", "PAD", "Attention", "Decoder", "Seq2SeqNetwork", "VectorToSequence"]
