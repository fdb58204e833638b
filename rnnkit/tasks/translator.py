"""Sequence-to-sequence: translate one token sequence into another of a different length (e.g. spelling ->
pronunciation), with attention, scheduled teacher forcing, greedy and beam decoding.

>>> model = rk.Seq2Seq(source_level="char", target_level="space", attention="general")
>>> model.fit(words, pronunciations)                 # e.g. "cat" -> "K AE1 T"
>>> model.predict(["dog"], beam=5)                   # ["D AO1 G"]
>>> model.evaluate(words, pronunciations)            # sequence error rate (WER for G2P), token error rate (PER)
>>> model.save("g2p/"); rk.Seq2Seq.load("g2p/")
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from rnnkit._checks import check_choice, check_positive_int
from rnnkit.data.text import LEVELS, Vocabulary, tokenize
from rnnkit.io import ModelFileError, check_state_dict, load_model, save_model
from rnnkit.seq2seq.model import EOS, GO, PAD, Seq2SeqNetwork
from rnnkit.tasks.trainer import check_training_options, fit_module
from rnnkit.training.modules import _NetworkModule

TASK = "seq2seq"


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _collate(batch):
    """``(source ids, target ids)`` pairs -> padded sources, their lengths, and targets framed by ``<go>`` and
    ``<eos>``. (At module level, unlike a closure, it pickles: ``ddp_spawn`` sends the loaders to its processes.)"""
    xs, ys = zip(*batch)
    lengths = torch.tensor([len(x) for x in xs])
    framed = [torch.cat([torch.tensor([GO]), y, torch.tensor([EOS])]) for y in ys]
    return pad_sequence(list(xs), True, PAD), lengths, pad_sequence(framed, True, PAD)


class Seq2SeqModule(_NetworkModule):
    """Negative log-likelihood of each target token with teacher forcing; the ratio moves linearly from
    ``teacher_forcing[0]`` at the first epoch to ``teacher_forcing[1]`` at the last (scheduled sampling)."""

    def __init__(self, network: Seq2SeqNetwork, learning_rate: float, teacher_forcing: tuple[float, float]) -> None:
        super().__init__(network, learning_rate)
        self.teacher_forcing = teacher_forcing

    def ratio(self) -> float:
        start, end = self.teacher_forcing
        last = max(1, (self.trainer.max_epochs or 1) - 1)
        return start + (end - start) * min(1.0, self.current_epoch / last)

    def loss(self, batch, stage: str) -> torch.Tensor:
        source, lengths, target = batch
        log_probs, _ = self.network(source, lengths, target[:, :-1], self.ratio() if stage == "train" else 1.0)
        loss = nn.functional.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), target[:, 1:].reshape(-1),
                                      ignore_index=PAD)
        self.log_epoch_mean(f"{stage}_loss", loss, len(source))
        return loss


class Seq2Seq:
    """A sequence-to-sequence translator over strings, with ``fit / predict / evaluate / save / load``.

    Args:
        source_level, target_level: ``"char"``, ``"word"`` or ``"space"`` (whitespace-separated tokens as
            they are, e.g. phonemes) — how each side is tokenised.
        cell, hidden_size, embedding_dim, encoder_layers, attention (``"dot"``, ``"general"``,
            ``"additive"`` or None), input_feeding, bidirectional: see :class:`rnnkit.seq2seq.Seq2SeqNetwork`.
        teacher_forcing: the ratio of true previous tokens fed while training, or ``(first epoch, last epoch)``.
        learning_rate, seed.
    """

    def __init__(self, source_level: str = "char", target_level: str = "char", cell: str = "gru",
                 hidden_size: int = 128, embedding_dim: int = 64, encoder_layers: int = 1,
                 attention: str | None = "general", input_feeding: bool = True, bidirectional: bool = True,
                 teacher_forcing: float | tuple[float, float] = 1.0, learning_rate: float = 3e-3, seed: int = 0) -> None:
        schedule = tuple(teacher_forcing) if isinstance(teacher_forcing, (tuple, list)) else (teacher_forcing,) * 2
        if len(schedule) != 2 or not all(0.0 <= r <= 1.0 for r in schedule):
            raise ValueError(f"teacher_forcing must be a ratio in [0, 1] or a (start, end) pair of them, got {teacher_forcing!r}")
        self.options = {
            "source_level": check_choice("source_level", source_level, LEVELS),
            "target_level": check_choice("target_level", target_level, LEVELS),
            "cell": cell, "hidden_size": check_positive_int("hidden_size", hidden_size),
            "embedding_dim": check_positive_int("embedding_dim", embedding_dim),
            "encoder_layers": check_positive_int("encoder_layers", encoder_layers),
            "attention": attention, "input_feeding": bool(input_feeding), "bidirectional": bool(bidirectional),
            "teacher_forcing": list(schedule), "learning_rate": float(learning_rate), "seed": int(seed),
        }
        self.source_vocabulary: Vocabulary | None = None
        self.target_vocabulary: Vocabulary | None = None
        self.network: Seq2SeqNetwork | None = None

    def _build(self) -> Seq2SeqNetwork:
        o = self.options
        return Seq2SeqNetwork(len(self.source_vocabulary), len(self.target_vocabulary), o["embedding_dim"],
                              o["hidden_size"], o["cell"], o["encoder_layers"], o["attention"], o["input_feeding"],
                              o["bidirectional"])

    def _encode(self, texts, vocabulary: Vocabulary, name: str) -> list[torch.Tensor]:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
            raise TypeError(f"{name} must be a non-empty list of strings")
        out = []
        for index, text in enumerate(texts):
            ids = vocabulary.encode(text) if isinstance(text, str) else None
            if not ids:
                raise ValueError(f"{name}[{index}] = {text!r} has no {vocabulary.level} tokens")
            out.append(torch.tensor(ids))
        return out

    def _loader(self, sources, targets, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(list(zip(sources, targets)), batch_size=batch_size, shuffle=shuffle, collate_fn=_collate,
                          generator=torch.Generator().manual_seed(self.options["seed"]))

    def fit(self, sources, targets, epochs: int = 10, batch_size: int = 64, validation=None, **training) -> "Seq2Seq":
        """Fit on pairs of strings; ``validation=(sources, targets)`` adds a validation loss. ``training``
        options go to :func:`rnnkit.tasks.trainer.fit_module` (early stopping, logs, checkpoints, ...)."""
        check_training_options(self, training)
        o = self.options
        if not isinstance(sources, (list, tuple)) or not isinstance(targets, (list, tuple)) or len(sources) != len(targets):
            raise ValueError("sources and targets must be lists of strings of the same length")
        self.source_vocabulary = Vocabulary.build(sources, o["source_level"])
        self.target_vocabulary = Vocabulary.build(targets, o["target_level"])
        source_ids = self._encode(sources, self.source_vocabulary, "sources")
        target_ids = self._encode(targets, self.target_vocabulary, "targets")
        pl.seed_everything(o["seed"], verbose=False)
        self.network = self._build()
        valid = None
        if validation is not None:
            valid = self._loader(self._encode(validation[0], self.source_vocabulary, "validation sources"),
                                 self._encode(validation[1], self.target_vocabulary, "validation targets"),
                                 batch_size, False)
        module = Seq2SeqModule(self.network, o["learning_rate"], tuple(o["teacher_forcing"]))
        fit_module(module, self._loader(source_ids, target_ids, batch_size, True), valid, epochs, **training)
        self.network.eval()
        return self

    def predict(self, sources, beam: int = 1, max_length: int | None = None, length_penalty: float = 0.0,
                batch_size: int = 256) -> list[str]:
        """Translations: greedy with ``beam=1``, else beam search of that width. ``max_length`` caps the output
        (default: twice the longest source + 10 tokens); longer outputs are cut there."""
        if self.network is None:
            raise RuntimeError("this Seq2Seq is not fitted yet: call fit(...) or Seq2Seq.load(directory)")
        encoded = self._encode(sources, self.source_vocabulary, "sources")
        limit = max_length or 2 * max(len(x) for x in encoded) + 10
        out = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start: start + batch_size]
            source, lengths = pad_sequence(chunk, True, PAD), torch.tensor([len(x) for x in chunk])
            if check_positive_int("beam", beam) == 1:
                sequences, _ = self.network.greedy(source, lengths, limit)
            else:
                sequences, _ = self.network.beam_search(source, lengths, beam, limit, length_penalty)
            out += [self.target_vocabulary.decode(s) for s in sequences]
        return out

    @torch.no_grad()
    def attention(self, source: str, beam: int = 1) -> tuple[list[str], list[str], torch.Tensor]:
        """For one source: its tokens, the predicted tokens (with ``<eos>``) and the attention weights
        ``[target steps, source steps]`` the model used to produce them (for a heatmap)."""
        if self.options["attention"] is None:
            raise ValueError("this model has no attention (attention=None)")
        (prediction,) = self.predict([source], beam)
        source_ids = self._encode([source], self.source_vocabulary, "source")[0]
        out = self.target_vocabulary.encode(prediction) + [EOS]
        target_in = torch.tensor([[GO] + out[:-1]])
        _, weights = self.network(source_ids[None], torch.tensor([len(source_ids)]), target_in)
        tokens = [self.source_vocabulary.tokens[i] for i in source_ids.tolist()]
        return tokens, [self.target_vocabulary.tokens[i] for i in out], weights[0]

    def evaluate(self, sources, targets, beam: int = 1) -> dict:
        """``sequence_error_rate``: share of outputs not exactly right (word error rate, for G2P);
        ``token_error_rate``: edit distance over reference tokens (phoneme error rate, for G2P)."""
        predictions = self.predict(sources, beam)
        level = self.options["target_level"]
        wrong = distance = reference = 0
        for predicted, target in zip(predictions, targets):
            p, t = tokenize(predicted, level), tokenize(target, level)
            wrong += p != t
            distance += edit_distance(p, t)
            reference += len(t)
        return {"sequence_error_rate": wrong / len(targets), "token_error_rate": distance / max(reference, 1),
                "examples": len(targets)}

    def save(self, directory) -> None:
        if self.network is None:
            raise RuntimeError("this Seq2Seq is not fitted yet")
        config = {"options": self.options, "source_vocabulary": self.source_vocabulary.to_config(),
                  "target_vocabulary": self.target_vocabulary.to_config()}
        save_model(directory, TASK, config, self.network.state_dict())

    @classmethod
    def load(cls, directory) -> "Seq2Seq":
        config, weights = load_model(directory, TASK)
        try:
            options = dict(config["options"])
            options["teacher_forcing"] = tuple(options["teacher_forcing"])
            model = cls(**options)
            model.source_vocabulary = Vocabulary(**config["source_vocabulary"])
            model.target_vocabulary = Vocabulary(**config["target_vocabulary"])
            model.network = model._build()
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{directory}: config.json does not describe a seq2seq model ({error!r})") from error
        check_state_dict(model.network, weights, directory)
        model.network.eval()
        return model

