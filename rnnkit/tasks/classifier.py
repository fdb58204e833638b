"""Classifying whole sequences: texts, or sequences of feature vectors (speech features, biosignals).

>>> clf = rk.SequenceClassifier(cell="lstm", hidden_size=64)
>>> clf.fit(train_sequences, train_labels)       # a list of [T_i, F] arrays (lengths may differ), labels
>>> clf.fit(train_texts, train_labels)           # or strings: tokenizer -> Embedding -> RNN -> Dense
>>> clf.predict(test_sequences)                  # labels; predict_proba for probabilities
>>> clf.evaluate(test_sequences, test_labels)    # accuracy, macro F1, confusion matrix
>>> clf.save("vowels-model/"); rk.SequenceClassifier.load("vowels-model/")

Batches are padded and carry their lengths, so padding never reaches the recurrent state; the network
classifies from the final state of the last layer (both directions when bidirectional). Features are
standardised with the mean and standard deviation of the training steps. Texts are tokenised (words or
characters), mapped to ids by a vocabulary built on the training texts (unknown tokens -> ``<unk>``)
and embedded: the classic ``Embedding(V, 50) + LSTM + Dense(softmax)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

import lightning.pytorch as pl

import rnnkit as rk
from rnnkit._checks import check_choice, check_positive_int, check_probability
from rnnkit.data.text import LEVELS, Vocabulary
from rnnkit.io import ModelFileError, check_state_dict, load_model, save_model
from rnnkit.tasks.trainer import fit_module
from rnnkit.training.modules import ClassificationModule

TASK = "sequence-classifier"


class ClassifierNetwork(nn.Module):
    """[Embedding,] recurrent layers, then a linear layer from the last layer's final state(s) to class scores.

    With ``vocabulary_size``, inputs are token ids ``[B, T]`` embedded into ``features`` dimensions.
    """

    def __init__(self, features: int, classes: int, cell: str, hidden_size: int, num_layers: int,
                 vocabulary_size: int | None = None, **options) -> None:
        super().__init__()
        self.embedding = None if vocabulary_size is None else nn.Embedding(vocabulary_size, features, padding_idx=0)
        self.rnn = rk.RNN(features, hidden_size, num_layers, cell=cell, **options)
        self.head = nn.Linear(hidden_size * self.rnn.num_directions, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # [B, T, F] or [B, T] ids -> [B, C]
        if self.embedding is not None:
            x = self.embedding(x)
        _, state = self.rnn(x, lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state  # [L*D, B, H]
        last = h[-self.rnn.num_directions:]  # the last layer's directions
        return self.head(last.transpose(0, 1).reshape(x.shape[0], -1))


def _is_text(values) -> bool:
    return isinstance(values, (list, tuple)) and bool(values) and all(isinstance(v, str) for v in values)


def _sequences(values, name: str) -> list[np.ndarray]:
    if isinstance(values, np.ndarray) and values.ndim == 3:
        values = list(values)
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of [T, F] arrays (or a [N, T, F] array) or of strings")
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


class SequenceClassifier:
    """A recurrent sequence classifier with ``fit / predict / evaluate / save / load``.

    Args:
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``; hidden_size, num_layers, bidirectional, dropout and cell
            options (layer_norm, recurrent_dropout, ...) go to :class:`rnnkit.RNN`.
        embedding_dim, level, max_vocabulary, min_count: for texts — embedding size, ``"word"`` or
            ``"char"`` tokens, vocabulary size cap (with the 4 special tokens) and minimum token count.
        learning_rate, weight_decay: AdamW's. seed: initialisation and batch order.
    """

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
        self.network: ClassifierNetwork | None = None
        self.classes: list[str] = []
        self.mean = self.std = None
        self.vocabulary: Vocabulary | None = None  # set when fitted on texts

    def _build(self, classes: int) -> ClassifierNetwork:
        o = self.options
        if self.vocabulary is not None:
            features, vocabulary_size = o["embedding_dim"], len(self.vocabulary)
        else:
            features, vocabulary_size = len(self.mean), None
        return ClassifierNetwork(features, classes, o["cell"], o["hidden_size"], o["num_layers"], vocabulary_size,
                                 bidirectional=o["bidirectional"], dropout=o["dropout"], **o["layer_options"])

    def _inputs(self, values, name: str) -> list[torch.Tensor]:
        """Texts -> id tensors, arrays -> standardised float tensors, checked against what was fitted."""
        if self.vocabulary is not None:
            if not _is_text(values):
                raise TypeError(f"{name}: this model was fitted on texts, so it needs a list of strings")
            ids = [self.vocabulary.encode(text) for text in values]
            empty = [i for i, row in enumerate(ids) if not row]
            if empty:
                raise ValueError(f"{name}[{empty[0]}] has no tokens ({values[empty[0]]!r}); give every text some content")
            return [torch.tensor(row) for row in ids]
        return self._standardise(_sequences(values, name), name)

    def _standardise(self, sequences: list[np.ndarray], name: str) -> list[torch.Tensor]:
        if sequences[0].shape[1] != len(self.mean):
            raise ValueError(f"{name} have {sequences[0].shape[1]} features, the model was fitted on {len(self.mean)}")
        return [torch.as_tensor((s - self.mean) / self.std, dtype=torch.float32) for s in sequences]

    def _batches(self, tensors: list[torch.Tensor], targets: list[int] | None, batch_size: int, shuffle: bool):
        labels = targets if targets is not None else [0] * len(tensors)
        items = list(zip(tensors, labels))

        def collate(batch):
            xs, ys = zip(*batch)
            lengths = torch.tensor([len(x) for x in xs])
            return pad_sequence(list(xs), batch_first=True), lengths, torch.tensor(ys)

        generator = torch.Generator().manual_seed(self.options["seed"])
        return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)

    def fit(self, sequences, labels, epochs: int = 60, batch_size: int = 32, validation=None,
            patience: int | None = None, gradient_clip: float | None = 1.0, progress: bool = True,
            log_dir=None) -> "SequenceClassifier":
        """Fit on ``sequences`` (a list of ``[T_i, F]`` arrays, or of strings) and their ``labels`` (any
        hashable; stored as strings).

        ``validation=(sequences, labels)`` adds a validation loss/accuracy (and early stopping after
        ``patience`` epochs without improvement).
        """
        o = self.options
        if _is_text(sequences):
            self.vocabulary = Vocabulary.build(sequences, o["level"], o["min_count"], o["max_vocabulary"])
            self.mean = self.std = None
            inputs = self._inputs(sequences, "sequences")
        else:
            self.vocabulary = None
            arrays = _sequences(sequences, "sequences")
            steps = np.concatenate(arrays)
            self.mean, self.std = steps.mean(0), np.where(steps.std(0) > 1e-12, steps.std(0), 1.0)
            inputs = self._standardise(arrays, "sequences")
        labels = [str(label) for label in labels]
        if len(labels) != len(inputs):
            raise ValueError(f"got {len(inputs)} sequences but {len(labels)} labels")
        self.classes = sorted(set(labels))
        if len(self.classes) < 2:
            raise ValueError(f"need at least two classes to classify, got {self.classes}")
        pl.seed_everything(o["seed"], verbose=False)
        self.network = self._build(len(self.classes))
        train = self._batches(inputs, self._indices(labels), batch_size, shuffle=True)
        valid = None
        if validation is not None:
            valid_x = self._inputs(validation[0], "validation sequences")
            valid = self._batches(valid_x, self._indices(validation[1]), batch_size, shuffle=False)
        module = ClassificationModule(self.network, self.options["learning_rate"], self.options["weight_decay"])
        fit_module(module, train, valid, epochs, gradient_clip, patience, progress, log_dir)
        self.network.eval()
        return self

    def _indices(self, labels) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        unseen = sorted({str(label) for label in labels} - set(index))
        if unseen:
            raise ValueError(f"labels {unseen} were not seen in training; the classes are {self.classes}")
        return [index[str(label)] for label in labels]

    def _check_fitted(self) -> None:
        if self.network is None:
            raise RuntimeError("this SequenceClassifier is not fitted yet: call fit(...) or load(directory)")

    def predict_proba(self, sequences, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``[N, C]``, columns in the order of ``self.classes``."""
        self._check_fitted()
        chunks = []
        with torch.no_grad():
            for x, lengths, _ in self._batches(self._inputs(sequences, "sequences"), None, batch_size, shuffle=False):
                chunks.append(torch.softmax(self.network(x, lengths), dim=1).double().numpy())
        return np.concatenate(chunks)

    def predict(self, sequences) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(sequences).argmax(1)]

    def evaluate(self, sequences, labels) -> dict:
        """Accuracy, macro-averaged F1, and the confusion matrix (rows: true class, columns: predicted)."""
        truth = np.array(self._indices(labels))
        predicted = self.predict_proba(sequences).argmax(1)
        classes = len(self.classes)
        confusion = np.zeros((classes, classes), dtype=int)
        np.add.at(confusion, (truth, predicted), 1)
        tp = np.diag(confusion).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(confusion.sum(0) > 0, tp / confusion.sum(0), 0.0)
            recall = np.where(confusion.sum(1) > 0, tp / confusion.sum(1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return {"accuracy": float(tp.sum() / len(truth)), "macro_f1": float(f1.mean()),
                "confusion": confusion.tolist(), "classes": list(self.classes)}

    def save(self, directory) -> None:
        self._check_fitted()
        config = {"options": self.options, "classes": self.classes,
                  "mean": None if self.mean is None else self.mean.tolist(),
                  "std": None if self.std is None else self.std.tolist(),
                  "vocabulary": None if self.vocabulary is None else self.vocabulary.to_config()}
        save_model(directory, TASK, config, {f"network.{k}": v for k, v in self.network.state_dict().items()})

    @classmethod
    def load(cls, directory) -> "SequenceClassifier":
        config, weights = load_model(directory, TASK)
        try:
            options = dict(config["options"])
            model = cls(**{k: v for k, v in options.items() if k != "layer_options"}, **options["layer_options"])
            model.classes = [str(c) for c in config["classes"]]
            if config.get("vocabulary") is not None:
                model.vocabulary = Vocabulary(**config["vocabulary"])
            else:
                model.mean, model.std = np.asarray(config["mean"]), np.asarray(config["std"])
            model.network = model._build(len(model.classes))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{directory}: config.json does not describe a sequence classifier ({error!r})") from error
        check_state_dict(model.network, {k[len("network."):]: v for k, v in weights.items()}, directory)
        model.network.eval()
        return model
