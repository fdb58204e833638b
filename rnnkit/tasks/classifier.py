"""Classifying whole sequences of feature vectors (speech features, biosignals, sensor traces).

>>> clf = rk.SequenceClassifier(cell="lstm", hidden_size=64)
>>> clf.fit(train_sequences, train_labels)       # a list of [T_i, F] arrays (lengths may differ), labels
>>> clf.predict(test_sequences)                  # labels; predict_proba for probabilities
>>> clf.evaluate(test_sequences, test_labels)    # accuracy, macro F1, confusion matrix
>>> clf.save("vowels-model/"); rk.SequenceClassifier.load("vowels-model/")

Batches are padded and carry their lengths, so padding never reaches the recurrent state; the network
classifies from the final state of the last layer (both directions when bidirectional). Features are
standardised with the mean and standard deviation of the training steps.
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
from rnnkit.io import ModelFileError, check_state_dict, load_model, save_model
from rnnkit.tasks.trainer import fit_module
from rnnkit.training.modules import ClassificationModule

TASK = "sequence-classifier"


class ClassifierNetwork(nn.Module):
    """Recurrent layers, then a linear layer from the last layer's final state(s) to class scores."""

    def __init__(self, features: int, classes: int, cell: str, hidden_size: int, num_layers: int, **options) -> None:
        super().__init__()
        self.rnn = rk.RNN(features, hidden_size, num_layers, cell=cell, **options)
        self.head = nn.Linear(hidden_size * self.rnn.num_directions, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # [B, T, F] -> [B, C]
        _, state = self.rnn(x, lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state  # [L*D, B, H]
        last = h[-self.rnn.num_directions:]  # the last layer's directions
        return self.head(last.transpose(0, 1).reshape(x.shape[0], -1))


def _sequences(values, name: str) -> list[np.ndarray]:
    if isinstance(values, np.ndarray) and values.ndim == 3:
        values = list(values)
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of [T, F] arrays (or a [N, T, F] array)")
    out = []
    for index, sequence in enumerate(values):
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
        learning_rate, weight_decay: AdamW's. seed: initialisation and batch order.
    """

    def __init__(self, cell: str = "lstm", hidden_size: int = 64, num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.0, learning_rate: float = 3e-3, weight_decay: float = 0.0, seed: int = 0,
                 **layer_options) -> None:
        self.options = {
            "cell": check_choice("cell", cell, ("rnn", "lstm", "gru")),
            "hidden_size": check_positive_int("hidden_size", hidden_size),
            "num_layers": check_positive_int("num_layers", num_layers),
            "bidirectional": bool(bidirectional),
            "dropout": check_probability("dropout", dropout),
            "learning_rate": float(learning_rate),
            "weight_decay": float(weight_decay),
            "seed": int(seed),
            "layer_options": dict(layer_options),
        }
        self.network: ClassifierNetwork | None = None
        self.classes: list[str] = []
        self.mean = self.std = None

    def _build(self, features: int, classes: int) -> ClassifierNetwork:
        o = self.options
        return ClassifierNetwork(features, classes, o["cell"], o["hidden_size"], o["num_layers"],
                                 bidirectional=o["bidirectional"], dropout=o["dropout"], **o["layer_options"])

    def _batches(self, sequences: list[np.ndarray], targets: list[int] | None, batch_size: int, shuffle: bool):
        tensors = [torch.as_tensor((s - self.mean) / self.std, dtype=torch.float32) for s in sequences]
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
        """Fit on ``sequences`` (list of ``[T_i, F]``) and their ``labels`` (any hashable; stored as strings).

        ``validation=(sequences, labels)`` adds a validation loss/accuracy (and early stopping after
        ``patience`` epochs without improvement).
        """
        sequences = _sequences(sequences, "sequences")
        labels = [str(label) for label in labels]
        if len(labels) != len(sequences):
            raise ValueError(f"got {len(sequences)} sequences but {len(labels)} labels")
        self.classes = sorted(set(labels))
        if len(self.classes) < 2:
            raise ValueError(f"need at least two classes to classify, got {self.classes}")
        steps = np.concatenate(sequences)
        self.mean, self.std = steps.mean(0), np.where(steps.std(0) > 1e-12, steps.std(0), 1.0)
        index = {c: i for i, c in enumerate(self.classes)}
        pl.seed_everything(self.options["seed"], verbose=False)
        self.network = self._build(steps.shape[1], len(self.classes))
        train = self._batches(sequences, [index[c] for c in labels], batch_size, shuffle=True)
        valid = None
        if validation is not None:
            valid_x, valid_y = _sequences(validation[0], "validation sequences"), self._indices(validation[1])
            valid = self._batches(valid_x, valid_y, batch_size, shuffle=False)
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
        sequences = _sequences(sequences, "sequences")
        if sequences[0].shape[1] != len(self.mean):
            raise ValueError(f"sequences have {sequences[0].shape[1]} features, the model was fitted on {len(self.mean)}")
        chunks = []
        with torch.no_grad():
            for x, lengths, _ in self._batches(sequences, None, batch_size, shuffle=False):
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
        config = {"options": self.options, "classes": self.classes, "mean": self.mean.tolist(),
                  "std": self.std.tolist()}
        save_model(directory, TASK, config, {f"network.{k}": v for k, v in self.network.state_dict().items()})

    @classmethod
    def load(cls, directory) -> "SequenceClassifier":
        config, weights = load_model(directory, TASK)
        try:
            options = dict(config["options"])
            model = cls(**{k: v for k, v in options.items() if k != "layer_options"}, **options["layer_options"])
            model.classes = [str(c) for c in config["classes"]]
            model.mean, model.std = np.asarray(config["mean"]), np.asarray(config["std"])
            model.network = model._build(len(model.mean), len(model.classes))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{directory}: config.json does not describe a sequence classifier ({error!r})") from error
        check_state_dict(model.network, {k[len("network."):]: v for k, v in weights.items()}, directory)
        model.network.eval()
        return model
