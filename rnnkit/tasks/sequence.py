"""What the sequence classifier and the sequence tagger share: inputs, network, batches, metrics, files.

Inputs are sequences of feature vectors (``[T_i, F]`` arrays; standardised with the training steps'
mean and standard deviation), or texts: strings (tokenised) or lists of tokens, mapped to ids by a
vocabulary built on the training inputs (unknown tokens -> ``<unk>``) and embedded. Batches are padded
and carry their lengths, so padding never reaches the recurrent state.
"""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

import rnnkit as rk
from rnnkit._checks import check_choice, check_positive_int, check_probability
from rnnkit.data.text import LEVELS, Vocabulary
from rnnkit.io import ModelFileError, check_state_dict, load_model, save_model
from rnnkit.tasks.trainer import fit_module
from rnnkit.training.modules import IGNORE, ClassificationModule


class SequenceNetwork(nn.Module):
    """[Embedding,] recurrent layers, then a linear layer to class scores: from the last layer's final
    state(s) (``[B, C]``), or with ``per_step`` from every step's output (``[B, T, C]``)."""

    def __init__(self, features: int, classes: int, cell: str, hidden_size: int, num_layers: int,
                 vocabulary_size: int | None = None, per_step: bool = False, **options) -> None:
        super().__init__()
        self.per_step = per_step
        self.embedding = None if vocabulary_size is None else nn.Embedding(vocabulary_size, features, padding_idx=0)
        self.rnn = rk.RNN(features, hidden_size, num_layers, cell=cell, **options)
        self.head = nn.Linear(hidden_size * self.rnn.num_directions, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)  # [B, T] ids -> [B, T, E]
        outputs, state = self.rnn(x, lengths=lengths)
        if self.per_step:
            return self.head(outputs)  # [B, T, C]; padded steps are ignored by the loss
        h = state[0] if isinstance(state, tuple) else state  # [L*D, B, H]
        last = h[-self.rnn.num_directions:]  # the last layer's directions
        return self.head(last.transpose(0, 1).reshape(x.shape[0], -1))


def _is_text(values) -> bool:
    return isinstance(values, (list, tuple)) and bool(values) and all(isinstance(v, str) for v in values)


def _is_token_lists(values) -> bool:
    return (isinstance(values, (list, tuple)) and bool(values)
            and all(isinstance(v, (list, tuple)) and v and all(isinstance(t, str) for t in v) for v in values))


def _arrays(values, name: str) -> list[np.ndarray]:
    if isinstance(values, np.ndarray) and values.ndim == 3:
        values = list(values)
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of [T, F] arrays (or a [N, T, F] array), of strings "
                         "or of token lists")
    out = []
    for index, sequence in enumerate(values):
        if isinstance(sequence, str):
            raise TypeError(f"{name} mixes strings and arrays (item {index} is a string)")
        array = np.asarray(sequence, dtype=np.float64)
        array = array[:, None] if array.ndim == 1 else array
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"{name}[{index}] must be a non-empty [T, F] array, got shape {list(array.shape)}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name}[{index}] contains NaN or infinite values")
        out.append(array)
    widths = {a.shape[1] for a in out}
    if len(widths) != 1:
        raise ValueError(f"{name} mixes feature counts {sorted(widths)}; every sequence needs the same F")
    return out


def _collate(batch, per_step: bool):
    """``(sequence, target)`` pairs -> padded ``(x [B, T, ...], lengths [B], y)``: per-step targets padded with
    :data:`IGNORE`. (At module level, unlike a closure, it pickles: ``ddp_spawn`` sends the loaders to its
    processes.)"""
    xs, ys = zip(*batch)
    lengths = torch.tensor([len(x) for x in xs])
    if per_step:
        y = pad_sequence([torch.as_tensor(t) for t in ys], batch_first=True, padding_value=IGNORE)
    else:
        y = torch.tensor(ys)
    return pad_sequence(list(xs), batch_first=True), lengths, y


def classification_report(truth: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-averaged F1 and the confusion matrix (rows: true class, columns: predicted)."""
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    tp = np.diag(confusion).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(confusion.sum(0) > 0, tp / confusion.sum(0), 0.0)
        recall = np.where(confusion.sum(1) > 0, tp / confusion.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"accuracy": float(tp.sum() / len(truth)), "macro_f1": float(f1.mean()),
            "confusion": confusion.tolist(), "classes": list(classes)}


class SequenceTask:
    """Shared machinery; subclasses set ``TASK`` and ``PER_STEP`` and shape their targets and outputs.

    Args:
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``; hidden_size, num_layers, bidirectional, dropout and cell
            options (layer_norm, recurrent_dropout, ...) go to :class:`rnnkit.RNN`.
        embedding_dim, level, max_vocabulary, min_count: for texts — embedding size, ``"word"`` or
            ``"char"`` tokens, vocabulary size cap (with the 4 special tokens) and minimum token count.
        learning_rate, weight_decay: AdamW's. seed: initialisation and batch order.
    """

    TASK = ""
    PER_STEP = False

    def __init__(self, cell: str = "lstm", hidden_size: int = 64, num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.0, learning_rate: float = 3e-3, weight_decay: float = 0.0, seed: int = 0,
                 embedding_dim: int = 50, level: str = "word", max_vocabulary: int | None = 20000,
                 min_count: int = 1, **layer_options) -> None:
        self.options = {
            "cell": check_choice("cell", cell, ("rnn", "lstm", "gru")),
            "hidden_size": check_positive_int("hidden_size", hidden_size),
            "num_layers": check_positive_int("num_layers", num_layers),
            "bidirectional": bool(bidirectional),
            "dropout": check_probability("dropout", dropout),
            "learning_rate": float(learning_rate),
            "weight_decay": float(weight_decay),
            "seed": int(seed),
            "embedding_dim": check_positive_int("embedding_dim", embedding_dim),
            "level": check_choice("level", level, LEVELS),
            "max_vocabulary": None if max_vocabulary is None else check_positive_int("max_vocabulary", max_vocabulary),
            "min_count": check_positive_int("min_count", min_count),
            "layer_options": dict(layer_options),
        }
        self.network: SequenceNetwork | None = None
        self.classes: list[str] = []
        self.mean = self.std = None
        self.vocabulary: Vocabulary | None = None  # set when fitted on texts or tokens

    # ---------------------------------------------------------------- inputs
    def _build(self) -> SequenceNetwork:
        o = self.options
        if self.vocabulary is not None:
            features, vocabulary_size = o["embedding_dim"], len(self.vocabulary)
        else:
            features, vocabulary_size = len(self.mean), None
        return SequenceNetwork(features, len(self.classes), o["cell"], o["hidden_size"], o["num_layers"],
                               vocabulary_size, self.PER_STEP, bidirectional=o["bidirectional"], dropout=o["dropout"],
                               **o["layer_options"])

    def _fit_inputs(self, values) -> list[torch.Tensor]:
        """Fit the vocabulary or the feature scaling on the training inputs, and encode them."""
        o = self.options
        if _is_text(values) or _is_token_lists(values):
            if _is_text(values):
                self.vocabulary = Vocabulary.build(values, o["level"], o["min_count"], o["max_vocabulary"])
            else:
                self.vocabulary = Vocabulary.from_tokens(values, o["level"], o["min_count"], o["max_vocabulary"])
            self.mean = self.std = None
            return self._inputs(values, "sequences")
        self.vocabulary = None
        arrays = _arrays(values, "sequences")
        steps = np.concatenate(arrays)
        self.mean, self.std = steps.mean(0), np.where(steps.std(0) > 1e-12, steps.std(0), 1.0)
        return self._standardise(arrays, "sequences")

    def _inputs(self, values, name: str) -> list[torch.Tensor]:
        """Texts -> id tensors, arrays -> standardised float tensors, checked against what was fitted."""
        if self.vocabulary is not None:
            if not (_is_text(values) or _is_token_lists(values)):
                raise TypeError(f"{name}: this model was fitted on texts, so it needs a list of strings or of "
                                "token lists")
            ids = [self.vocabulary.encode(text) for text in values]
            empty = [i for i, row in enumerate(ids) if not row]
            if empty:
                raise ValueError(f"{name}[{empty[0]}] has no tokens ({values[empty[0]]!r}); give every text some content")
            return [torch.tensor(row) for row in ids]
        return self._standardise(_arrays(values, name), name)

    def _standardise(self, sequences: list[np.ndarray], name: str) -> list[torch.Tensor]:
        if sequences[0].shape[1] != len(self.mean):
            raise ValueError(f"{name} have {sequences[0].shape[1]} features, the model was fitted on {len(self.mean)}")
        return [torch.as_tensor((s - self.mean) / self.std, dtype=torch.float32) for s in sequences]

    def _indices(self, labels) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        unseen = sorted({str(label) for label in labels} - set(index))
        if unseen:
            raise ValueError(f"labels {unseen} were not seen in training; the classes are {self.classes}")
        return [index[str(label)] for label in labels]

    def _batches(self, tensors: list[torch.Tensor], targets: list | None, batch_size: int, shuffle: bool):
        """Padded batches ``(x, lengths, y)``; per-step targets are padded with :data:`IGNORE`."""
        if targets is not None:
            labels = targets
        else:  # prediction: placeholders shaped like the targets
            labels = [[0] * len(t) for t in tensors] if self.PER_STEP else [0] * len(tensors)

        generator = torch.Generator().manual_seed(self.options["seed"])
        return DataLoader(list(zip(tensors, labels)), batch_size=batch_size, shuffle=shuffle,
                          collate_fn=functools.partial(_collate, per_step=self.PER_STEP), generator=generator)

    # ---------------------------------------------------------------- training and use
    def _fit(self, inputs: list[torch.Tensor], targets: list, validation, epochs: int, batch_size: int,
             training: dict) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"need at least two classes, got {self.classes}")
        pl.seed_everything(self.options["seed"], verbose=False)
        self.network = self._build()
        train = self._batches(inputs, targets, batch_size, shuffle=True)
        valid = None if validation is None else self._batches(*validation, batch_size, shuffle=False)
        module = ClassificationModule(self.network, self.options["learning_rate"], self.options["weight_decay"])
        fit_module(module, train, valid, epochs, **training)
        self.network.eval()

    def _check_fitted(self) -> None:
        if self.network is None:
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(...) or load(directory)")

    def _logits(self, values, batch_size: int = 256) -> list[np.ndarray]:
        """Class probabilities: one ``[C]`` row per sequence, or one ``[T_i, C]`` array per sequence."""
        self._check_fitted()
        out = []
        with torch.no_grad():
            for x, lengths, _ in self._batches(self._inputs(values, "sequences"), None, batch_size, shuffle=False):
                probabilities = torch.softmax(self.network(x, lengths), dim=-1).double().numpy()
                out += ([p[:n] for p, n in zip(probabilities, lengths.tolist())] if self.PER_STEP
                        else list(probabilities))
        return out

    # ---------------------------------------------------------------- files
    def save(self, directory) -> None:
        """Write the model to ``directory`` (config.json + model.safetensors), atomically."""
        self._check_fitted()
        config = {"options": self.options, "classes": self.classes,
                  "mean": None if self.mean is None else self.mean.tolist(),
                  "std": None if self.std is None else self.std.tolist(),
                  "vocabulary": None if self.vocabulary is None else self.vocabulary.to_config()}
        save_model(directory, self.TASK, config, {f"network.{k}": v for k, v in self.network.state_dict().items()})

    @classmethod
    def load(cls, directory):
        """Read a model written by :meth:`save`; a file of another task or a damaged one is refused clearly."""
        config, weights = load_model(directory, cls.TASK)
        try:
            options = dict(config["options"])
            model = cls(**{k: v for k, v in options.items() if k != "layer_options"}, **options["layer_options"])
            model.classes = [str(c) for c in config["classes"]]
            if config.get("vocabulary") is not None:
                model.vocabulary = Vocabulary(**config["vocabulary"])
            else:
                model.mean, model.std = np.asarray(config["mean"]), np.asarray(config["std"])
            model.network = model._build()
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{directory}: config.json does not describe a {cls.TASK} ({error!r})") from error
        check_state_dict(model.network, {k[len("network."):]: v for k, v in weights.items()}, directory)
        model.network.eval()
        return model
