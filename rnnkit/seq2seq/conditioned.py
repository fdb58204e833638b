r"""One-to-many: generate a token sequence from one vector (a class, an image's or a series' features).

The vector :math:`v` sets the decoder's first state, :math:`h_0 = \tanh(W v + b)`, and is fed again at every
step beside the previous token: :math:`h_t = \mathrm{cell}([E y_{t-1}; v], h_{t-1})`,
:math:`p(y_t) = \mathrm{softmax}(W_o h_t)`. Training uses teacher forcing; generation is greedy, sampled or
beam search (:class:`rnnkit.seq2seq.model.Decoder`), ``vectors`` standing where a source would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit._checks import check_choice, check_positive_int
from rnnkit.cells import CELLS
from rnnkit.seq2seq.model import PAD, Decoder, run_cell


class VectorToSequence(Decoder):
    """``forward(vectors [B, D], None, target_in [B, T]) -> (log-probabilities [B, T, V], None)``;
    ``greedy(vectors, None, max_length)``, ``sample(...)``, ``beam_search(...)`` generate."""

    def __init__(self, vector_size: int, target_vocabulary: int, embedding_dim: int = 32, hidden_size: int = 64,
                 cell: str = "gru") -> None:
        super().__init__()
        check_choice("cell", cell, ("rnn", "lstm", "gru"))
        self.vector_size = check_positive_int("vector_size", vector_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.target_embedding = nn.Embedding(target_vocabulary, embedding_dim, padding_idx=PAD)
        self.decoder = CELLS[cell](embedding_dim + vector_size, hidden_size)
        self.bridges = nn.ModuleList(nn.Linear(vector_size, hidden_size) for _ in range(self.decoder.state_size))
        self.output = nn.Linear(hidden_size, target_vocabulary)

    def encode(self, vectors: Tensor, lengths: Tensor | None = None):
        if vectors.dim() != 2 or vectors.shape[1] != self.vector_size:
            raise ValueError(f"vectors must have shape [B, {self.vector_size}], got {list(vectors.shape)}")
        state = tuple(torch.tanh(bridge(vectors)) for bridge in self.bridges)
        memory = vectors[:, None, :]  # [B, 1, D]: the vector, read at every step
        return memory, torch.ones(vectors.shape[0], 1, dtype=torch.bool, device=vectors.device), state

    def step(self, previous: Tensor, state, feed: Tensor, memory: Tensor, mask: Tensor):
        h, state = self.decoder(torch.cat([self.target_embedding(previous), memory[:, 0]], dim=-1), state)
        return torch.log_softmax(self.output(h), dim=-1), state, h, None

    def teacher_forced(self, vectors: Tensor, lengths: Tensor | None, target_in: Tensor) -> tuple[Tensor, None]:
        """Every decoder input is known up front: the cell runs over the whole target as one call of the engine."""
        memory, _, state = self.encode(vectors, lengths)
        inputs = self.target_embedding(target_in)  # [B, T, E]
        inputs = torch.cat([inputs, memory.expand(-1, inputs.shape[1], -1)], dim=-1)
        return torch.log_softmax(self.output(run_cell(self.decoder, inputs, state)), dim=-1), None
