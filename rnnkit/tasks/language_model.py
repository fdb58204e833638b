r"""Character- and word-level language models: next-token prediction, perplexity, generation.

>>> lm = rk.LanguageModel.from_text(text, level="char")   # vocabulary of the training text
>>> lm.fit(text, epochs=10)                                # truncated BPTT over parallel streams
>>> lm.perplexity(held_out_text); lm.bits_per_character(held_out_text)
>>> lm.generate("To be", length=200, temperature=0.8, top_k=20, seed=0)

Training cuts the token stream into ``batch_size`` parallel streams and runs them ``bptt`` steps at a
time, carrying each stream's state forward detached (:mod:`rnnkit.training.tbptt`). Perplexity is
:math:`\exp(-\frac1N\sum_t \log p(w_t \mid w_{<t}))`; bits per character divide the mean negative
log-likelihood by :math:`\ln 2`.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import rnnkit as rk
from rnnkit._checks import check_choice, check_positive_int, check_probability
from rnnkit.data.text import LEVELS, SPECIALS, Vocabulary
from rnnkit.io import ModelFileError, check_state_dict, load_model, save_model
from rnnkit.tasks.trainer import check_training_options, fit_module
from rnnkit.training.tbptt import TBPTTModule, detach_state

TASK = "language-model"


class LMNetwork(nn.Module):
    """Embedding -> recurrent layers -> dropout -> linear scores over the vocabulary, with the state carried:
    ``(ids [B, T], state) -> (logits [B, T, V], state)``. ``tie`` shares the embedding and output weights
    (Press & Wolf 2017), which needs ``hidden_size == embedding_dim``."""

    def __init__(self, vocabulary: int, embedding_dim: int, hidden_size: int, num_layers: int, cell: str,
                 dropout: float = 0.0, tie: bool = False) -> None:
        super().__init__()
        if tie and hidden_size != embedding_dim:
            raise ValueError(f"tie_embeddings needs hidden_size == embedding_dim, got {hidden_size} and {embedding_dim}")
        self.embedding = nn.Embedding(vocabulary, embedding_dim)
        self.rnn = rk.RNN(embedding_dim, hidden_size, num_layers, cell=cell, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocabulary)
        self.tied = bool(tie)
        if self.tied:
            self.output.weight = self.embedding.weight

    def forward(self, ids: Tensor, state=None):
        out, state = self.rnn(self.dropout(self.embedding(ids)), state=state)
        return self.output(self.dropout(out)), state


def _token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Scores outside the ``top_k`` largest, or outside the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2020), set to -inf. ``logits [..., V]``."""
    if top_k is not None:
        k = min(check_positive_int("top_k", top_k), logits.shape[-1])
        threshold = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        ordered, order = logits.sort(dim=-1, descending=True)
        before = torch.softmax(ordered, dim=-1).cumsum(-1) - torch.softmax(ordered, dim=-1)  # mass before each
        drop = before >= top_p  # a token is kept while the mass before it is still short of top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


class LanguageModel:
    """A recurrent language model with ``fit / perplexity / generate / save / load``.

    Args:
        vocabulary: a :class:`rnnkit.data.text.Vocabulary` (``from_text`` builds one from the training text).
        cell, hidden_size, num_layers, embedding_dim, dropout: the network.
        tie_embeddings: share input and output embeddings (needs ``hidden_size == embedding_dim``).
        learning_rate, seed: Adam's step size; initialisation.
    """

    def __init__(self, vocabulary: Vocabulary, cell: str = "lstm", hidden_size: int = 256, num_layers: int = 1,
                 embedding_dim: int = 64, dropout: float = 0.0, tie_embeddings: bool = False,
                 learning_rate: float = 3e-3, seed: int = 0) -> None:
        self.vocabulary = vocabulary
        self.options = {
            "cell": check_choice("cell", cell, ("rnn", "lstm", "gru")),
            "hidden_size": check_positive_int("hidden_size", hidden_size),
            "num_layers": check_positive_int("num_layers", num_layers),
            "embedding_dim": check_positive_int("embedding_dim", embedding_dim),
            "dropout": check_probability("dropout", dropout),
            "tie_embeddings": bool(tie_embeddings),
            "learning_rate": float(learning_rate),
            "seed": int(seed),
        }
        with torch.random.fork_rng():  # reproducible initialisation without resetting the caller's RNG
            torch.manual_seed(self.options["seed"])
            self.network = self._build()

    @classmethod
    def from_text(cls, text: str, level: str = "char", min_count: int = 1, max_vocabulary: int | None = None,
                  **options) -> "LanguageModel":
        """A model whose vocabulary is the tokens of ``text`` (characters or words)."""
        return cls(Vocabulary.build([text], check_choice("level", level, LEVELS), min_count, max_vocabulary), **options)

    def _build(self) -> LMNetwork:
        o = self.options
        return LMNetwork(len(self.vocabulary), o["embedding_dim"], o["hidden_size"], o["num_layers"], o["cell"],
                         o["dropout"], o["tie_embeddings"])

    def _ids(self, text: str, name: str) -> Tensor:
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
        ids = torch.tensor(self.vocabulary.encode(text))
        if len(ids) < 2:
            raise ValueError(f"{name} needs at least two {self.vocabulary.level} tokens, got {len(ids)}")
        return ids

    def fit(self, text: str, epochs: int = 10, batch_size: int = 32, bptt: int = 100, validation_text: str | None = None,
            **training) -> "LanguageModel":
        """Train on ``text`` with truncated BPTT (``bptt`` steps per update) over ``batch_size`` streams.
        ``validation_text`` adds a ``val_loss`` (mean negative log-likelihood per token) every epoch.
        ``training`` options (progress, log_dir, callbacks, patience, checkpoint_dir/resume) go to
        :func:`rnnkit.tasks.trainer.fit_module`; clipping is done inside (norm 1.0)."""
        check_training_options(self, training, reserved=("gradient_clip",))
        inputs, targets = self._streams(self._ids(text, "text"), batch_size)
        pl.seed_everything(self.options["seed"], verbose=False)
        module = TBPTTModule(self.network, k=check_positive_int("bptt", bptt), learning_rate=self.options["learning_rate"],
                             loss=_token_loss)
        loader = DataLoader(TensorDataset(inputs, targets), batch_size=len(inputs))
        validation = None
        if validation_text is not None:
            valid_inputs, valid_targets = self._streams(self._ids(validation_text, "validation_text"), 1)
            validation = DataLoader(TensorDataset(valid_inputs, valid_targets), batch_size=1)
        fit_module(module, loader, validation, epochs, gradient_clip=None, **training)
        self.network.eval()
        return self

    @staticmethod
    def _streams(ids: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """The token stream cut into ``count`` parallel streams: inputs and next-token targets ``[B, N]``."""
        streams = min(check_positive_int("batch_size", count), (len(ids) - 1) // 2)
        length = (len(ids) - 1) // streams
        return ids[: streams * length].view(streams, length), ids[1: streams * length + 1].view(streams, length)

    # inference mode, not just no_grad: no tensor made here outlives the call (a float, a str come out), and
    # skipping autograd's version and view bookkeeping takes 4-15% off each network call of a generation loop
    @torch.inference_mode()
    def _mean_nll(self, text: str, chunk: int = 512) -> float:
        ids = self._ids(text, "text")
        inputs, targets = ids[:-1][None], ids[1:][None]
        total, state = 0.0, None
        for start in range(0, inputs.shape[1], chunk):
            logits, state = self.network(inputs[:, start: start + chunk], state)
            total += nn.functional.cross_entropy(logits[0], targets[0, start: start + chunk], reduction="sum").item()
            state = detach_state(state)
        return total / inputs.shape[1]

    def perplexity(self, text: str) -> float:
        """exp of the mean negative log-likelihood of each token of ``text`` given the ones before it."""
        return math.exp(self._mean_nll(text))

    def bits_per_character(self, text: str) -> float:
        """Mean negative log2-likelihood per token (per character for a character-level model)."""
        return self._mean_nll(text) / math.log(2)

    @torch.inference_mode()
    def generate(self, prime: str, length: int = 200, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> str:
        """``prime`` followed by ``length`` sampled tokens: each drawn from softmax(scores / temperature),
        restricted to the ``top_k`` best and/or the ``top_p`` nucleus; the same ``seed`` gives the same text."""
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        ids = self.vocabulary.encode(prime)
        if not ids:
            raise ValueError(f"prime must contain at least one {self.vocabulary.level} token, got {prime!r}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        logits, state = self.network(torch.tensor(ids)[None])
        generated = []
        for _ in range(check_positive_int("length", length)):
            scores = logits[0, -1] / temperature
            scores[: len(SPECIALS)] = float("-inf")  # <pad>, <unk>, <go>, <eos> never occur in the training stream
            scores = filter_logits(scores, top_k, top_p)
            token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
            generated.append(token)
            logits, state = self.network(torch.tensor([[token]]), state)
        joiner = "" if self.vocabulary.level == "char" else " "
        return prime + (joiner if joiner and prime else "") + self.vocabulary.decode(generated)

    # ---------------------------------------------------------------- files
    def save(self, directory) -> None:
        """config.json (options, vocabulary) + model.safetensors, atomically; tied weights are stored once."""
        weights = self.network.state_dict()
        if self.network.tied:
            weights = {k: v for k, v in weights.items() if k != "output.weight"}
        save_model(directory, TASK, {"options": self.options, "vocabulary": self.vocabulary.to_config()}, weights)

    @classmethod
    def load(cls, directory) -> "LanguageModel":
        config, weights = load_model(directory, TASK)
        try:
            model = cls(Vocabulary(**config["vocabulary"]), **config["options"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{directory}: config.json does not describe a language model ({error!r})") from error
        if model.network.tied and "embedding.weight" in weights:
            weights = {**weights, "output.weight": weights["embedding.weight"]}
        check_state_dict(model.network, weights, directory)
        model.network.eval()
        return model

