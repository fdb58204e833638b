r"""Encoder-decoder with attention (Luong et al. 2015), teacher forcing, greedy decoding and beam search.

- Encoder: Embedding -> rnnkit recurrent layer(s), bidirectional by default; source padding never reaches
  its states (lengths).
- Bridge: the encoder's final states (both directions) -> :math:`\tanh(W s)` -> the decoder's first state.
- Decoder step: input :math:`[E y_{t-1}; \tilde h_{t-1}]` (input feeding; :math:`\tilde h_{t-1}` omitted
  without it), one rnnkit cell step to :math:`h_t`; with attention :math:`c_t = \mathrm{attn}(h_t, \bar h)`
  and :math:`\tilde h_t = \tanh(W_c [c_t; h_t])`, else :math:`\tilde h_t = h_t`;
  :math:`p(y_t) = \mathrm{softmax}(W_o \tilde h_t)`.
- Decoding starts from ``<go>`` (id 2) and ends at ``<eos>`` (id 3); ``<pad>`` is id 0 (the ids of
  :class:`rnnkit.data.text.Vocabulary`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import rnnkit as rk
from rnnkit._checks import check_choice, check_positive_int
from rnnkit.cells import CELLS
from rnnkit.engine.dispatch import run_layer_stacked
from rnnkit.seq2seq.attention import Attention

PAD, GO, EOS = 0, 2, 3


class Decoder(nn.Module):
    """Teacher-forced training and greedy / sampled / beam decoding for any network that defines
    ``encode(source, lengths) -> (memory, mask, first state)`` and ``step(previous, state, feed, memory,
    mask) -> (log-probabilities, state, feed, attention weights)``, and has ``hidden_size``. The memory is a
    ``[B, ...]`` tensor or a tuple of them, handed to every step as it is (beam search repeats each row)."""

    hidden_size: int

    def encode(self, source: Tensor, lengths: Tensor | None):
        raise NotImplementedError

    def step(self, previous: Tensor, state, feed: Tensor, memory: Tensor | tuple[Tensor, ...], mask: Tensor):
        raise NotImplementedError

    def teacher_forced(self, source: Tensor, lengths: Tensor | None, target_in: Tensor
                       ) -> tuple[Tensor, Tensor | None] | None:
        """What ``forward`` returns under full teacher forcing, every step at once, where no step's input depends
        on the step before's output (no input feeding); None where the steps must run one by one."""
        return None

    # ---------------------------------------------------------------- training
    def forward(self, source: Tensor, lengths: Tensor, target_in: Tensor, teacher_forcing: float = 1.0
                ) -> tuple[Tensor, Tensor | None]:
        """Log-probabilities ``[B, T, V]`` of each next token, and attention weights ``[B, T, S]``.

        ``target_in [B, T]`` starts with ``<go>``. With ``teacher_forcing`` < 1, each step feeds the model's
        own previous prediction instead of the true token with probability ``1 - teacher_forcing``.
        """
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must be a ratio in [0, 1], got {teacher_forcing!r}")
        if teacher_forcing == 1.0:
            whole = self.teacher_forced(source, lengths, target_in)
            if whole is not None:
                return whole
        memory, mask, state = self.encode(source, lengths)
        feed = _first(memory).new_zeros(source.shape[0], self.hidden_size)
        previous = target_in[:, 0]
        outputs, attention = [], []
        for t in range(target_in.shape[1]):
            log_probs, state, feed, weights = self.step(previous, state, feed, memory, mask)
            outputs.append(log_probs)
            attention.append(weights)
            if t + 1 < target_in.shape[1]:
                previous = target_in[:, t + 1]
                if teacher_forcing < 1:
                    own = log_probs.argmax(-1)
                    use_own = torch.rand(previous.shape, device=previous.device) >= teacher_forcing
                    previous = torch.where(use_own, own, previous)
        weights = None if attention[0] is None else torch.stack(attention, dim=1)  # steps give weights or None
        return torch.stack(outputs, dim=1), weights

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def greedy(self, source: Tensor, lengths: Tensor, max_length: int = 50) -> tuple[list[list[int]], Tensor]:
        """The most likely token at each step, until ``<eos>`` or ``max_length``: the sequences (without
        ``<eos>``) and the sum of their log-probabilities (``<eos>`` included)."""
        return self.sample(source, lengths, max_length, temperature=0.0)

    @torch.no_grad()
    def sample(self, source: Tensor, lengths: Tensor, max_length: int = 50, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> tuple[list[list[int]], Tensor]:
        """Each token drawn from softmax(log-probabilities / ``temperature``) (0: the most likely one, i.e.
        greedy), until ``<eos>`` or ``max_length``: the sequences and their log-probabilities under the model."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        memory, mask, state = self.encode(source, lengths)
        batch = source.shape[0]
        feed = _first(memory).new_zeros(batch, self.hidden_size)
        previous = torch.full((batch,), GO, dtype=torch.long, device=source.device)
        score = feed.new_zeros(batch)
        done = torch.zeros(batch, dtype=torch.bool, device=source.device)
        tokens = []
        for _ in range(check_positive_int("max_length", max_length)):
            log_probs, state, feed, _ = self.step(previous, state, feed, memory, mask)
            if temperature == 0:
                previous = log_probs.argmax(-1)
            else:
                previous = torch.multinomial(torch.softmax(log_probs / temperature, -1), 1, generator=generator)[:, 0]
            score += torch.where(done, torch.zeros_like(score), log_probs.gather(1, previous[:, None])[:, 0])
            tokens.append(previous)
            done |= previous == EOS
            if bool(done.all()):
                break
        return _trim(torch.stack(tokens, 1)), score

    @torch.no_grad()
    def beam_search(self, source: Tensor, lengths: Tensor, width: int = 5, max_length: int = 50,
                    length_penalty: float = 0.0) -> tuple[list[list[int]], Tensor]:
        """Batched beam search: per source, the best of ``width`` hypotheses, ranked by
        ``score / length ** length_penalty`` (0: raw log-probability); returns the sequences (without
        ``<eos>``) and their raw scores (sums of log-probabilities, ``<eos>`` included)."""
        width = check_positive_int("width", width)
        memory, mask, state = self.encode(source, lengths)
        batch = source.shape[0]
        def expand(tensor: Tensor) -> Tensor:  # [B, ...] -> [B*W, ...]
            return tensor.repeat_interleave(width, dim=0)

        memory = tuple(expand(m) for m in memory) if isinstance(memory, tuple) else expand(memory)
        mask, state = expand(mask), tuple(expand(s) for s in state)
        feed = _first(memory).new_zeros(batch * width, self.hidden_size)
        scores = feed.new_full((batch, width), float("-inf"))
        scores[:, 0] = 0.0  # one live hypothesis to start with
        tokens = torch.full((batch * width, 1), GO, dtype=torch.long, device=source.device)
        finished = torch.zeros(batch * width, dtype=torch.bool, device=source.device)
        for _ in range(check_positive_int("max_length", max_length)):
            log_probs, state, feed, _ = self.step(tokens[:, -1], state, feed, memory, mask)
            vocabulary = log_probs.shape[-1]
            log_probs[finished] = float("-inf")  # a finished hypothesis only continues with <eos>, for free
            log_probs[finished, EOS] = 0.0
            total = (scores.view(-1, 1) + log_probs).view(batch, width * vocabulary)
            scores, index = total.topk(width, dim=1)  # [B, W]
            origin = (torch.arange(batch, device=source.device)[:, None] * width + index // vocabulary).view(-1)
            chosen = (index % vocabulary).view(-1, 1)
            tokens = torch.cat([tokens[origin], chosen], dim=1)
            state, feed = tuple(s[origin] for s in state), feed[origin]
            finished = finished[origin] | (chosen[:, 0] == EOS)
            if bool(finished.all()):
                break
        generated = tokens[:, 1:]
        is_eos = generated == EOS
        first_eos = is_eos.float().argmax(1) + 1  # tokens up to and including the first <eos>
        length = torch.where(is_eos.any(1), first_eos, torch.full_like(first_eos, generated.shape[1]))
        ranking = scores.view(-1) / length.float() ** length_penalty
        best = ranking.view(batch, width).argmax(1) + torch.arange(batch, device=source.device) * width
        return _trim(generated[best]), scores.view(-1)[best]



class Seq2SeqNetwork(Decoder):
    """A sequence-to-sequence network over token ids.

    Args:
        source_vocabulary, target_vocabulary: vocabulary sizes (with the special tokens).
        embedding_dim, hidden_size, cell (``"rnn"``, ``"lstm"``, ``"gru"``), encoder_layers.
        attention: ``"dot"``, ``"general"``, ``"additive"`` or None (the decoder sees only its first state).
        input_feeding: feed the previous attentional state back into the decoder (Luong).
        bidirectional: a bidirectional encoder.
    """

    def __init__(self, source_vocabulary: int, target_vocabulary: int, embedding_dim: int = 32,
                 hidden_size: int = 64, cell: str = "gru", encoder_layers: int = 1, attention: str | None = "general",
                 input_feeding: bool = True, bidirectional: bool = True) -> None:
        super().__init__()
        check_choice("cell", cell, ("rnn", "lstm", "gru"))
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.input_feeding = bool(input_feeding) and attention is not None
        self.source_embedding = nn.Embedding(source_vocabulary, embedding_dim, padding_idx=PAD)
        self.target_embedding = nn.Embedding(target_vocabulary, embedding_dim, padding_idx=PAD)
        self.encoder = rk.RNN(embedding_dim, hidden_size, encoder_layers, cell=cell, bidirectional=bidirectional)
        memory_size = hidden_size * self.encoder.num_directions
        self.decoder = CELLS[cell](embedding_dim + (hidden_size if self.input_feeding else 0), hidden_size)
        self.bridges = nn.ModuleList(nn.Linear(memory_size, hidden_size) for _ in range(self.decoder.state_size))
        self.attention = None if attention is None else Attention(hidden_size, memory_size, attention)
        self.combine = None if attention is None else nn.Linear(memory_size + hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, target_vocabulary)

    # ---------------------------------------------------------------- pieces
    def encode(self, source: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """``source [B, S]`` ids -> memory ``[B, S, D*H]``, its mask ``[B, S]``, the decoder's first state. With
        additive attention the memory is a pair, the encoder's outputs and their projection for the score
        ``[B, S, H]`` (:meth:`Attention.prepare`: computed once, not at every step)."""
        memory, final = self.encoder(self.source_embedding(source), lengths=lengths)
        finals = final if isinstance(final, tuple) else (final,)
        directions = self.encoder.num_directions
        state = tuple(torch.tanh(bridge(f[-directions:].transpose(0, 1).reshape(source.shape[0], -1)))
                      for bridge, f in zip(self.bridges, finals))
        mask = torch.arange(source.shape[1], device=source.device)[None, :] < lengths.to(source.device)[:, None]
        prepared = None if self.attention is None else self.attention.prepare(memory)
        return memory if prepared is None else (memory, prepared), mask, state

    def step(self, previous: Tensor, state: tuple[Tensor, ...], feed: Tensor, memory: Tensor | tuple[Tensor, Tensor],
             mask: Tensor) -> tuple[Tensor, tuple[Tensor, ...], Tensor, Tensor | None]:
        """One decoder step from the previous tokens ``[B]``: ``(log-probabilities [B, V], state,
        attentional state [B, H], attention weights [B, S] or None)``."""
        inputs = self.target_embedding(previous)
        if self.input_feeding:
            inputs = torch.cat([inputs, feed], dim=-1)
        h, state = self.decoder(inputs, state)
        h, weights = self._attend(h, memory, mask)
        return torch.log_softmax(self.output(h), dim=-1), state, h, weights

    def teacher_forced(self, source: Tensor, lengths: Tensor, target_in: Tensor
                       ) -> tuple[Tensor, Tensor | None] | None:
        """Without input feeding, every decoder input is known up front: the decoder cell runs over the whole
        target as one call of the engine (the fused one on CPU), and attention reads all steps' states at once."""
        if self.input_feeding:
            return None
        memory, mask, state = self.encode(source, lengths)
        h, weights = self._attend(run_cell(self.decoder, self.target_embedding(target_in), state), memory, mask)
        return torch.log_softmax(self.output(h), dim=-1), weights

    def _attend(self, h: Tensor, memory: Tensor | tuple[Tensor, Tensor], mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Decoder states ``h [B, H]`` (one step) or ``[B, T, H]`` (all) -> the attentional states
        ``tanh(W_c [c_t; h_t])`` and the attention weights (``h`` itself and None without attention)."""
        if self.attention is None:
            return h, None
        keys, prepared = memory if isinstance(memory, tuple) else (memory, None)  # (see encode)
        context, weights = self.attention(h, keys, mask, prepared)
        return torch.tanh(self.combine(torch.cat([context, h], dim=-1))), weights


def run_cell(cell, inputs: Tensor, state: tuple[Tensor, ...]) -> Tensor:
    """``cell`` over a whole batch-first sequence ``inputs [B, T, I]`` from ``state`` (``[B, H]`` each), as a layer
    runs it (``auto``'s engine): every step's ``h``, ``[B, T, H]``."""
    hx = tuple(s[None] for s in state)  # [1, B, H]
    outputs, _ = run_layer_stacked((cell,), inputs.transpose(0, 1), hx, None, [None], "auto")
    return outputs.transpose(0, 1)


def _first(memory: Tensor | tuple[Tensor, ...]) -> Tensor:
    """The memory's tensor, or the first of its tuple: what the decoding loops take a dtype and device from."""
    return memory[0] if isinstance(memory, tuple) else memory


def _trim(tokens: Tensor) -> list[list[int]]:
    """Each row up to (not including) its first ``<eos>``."""
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out
