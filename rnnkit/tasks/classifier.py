"""Classifying whole sequences: texts, or sequences of feature vectors (speech features, biosignals).

>>> clf = rk.SequenceClassifier(cell="lstm", hidden_size=64)   # bidirectional by default
>>> clf.fit(train_sequences, train_labels)       # a list of [T_i, F] arrays (lengths may differ), labels
>>> clf.fit(train_texts, train_labels)           # or strings: tokenizer -> Embedding -> RNN -> Dense
>>> clf.predict(test_sequences)                  # labels; predict_proba for probabilities
>>> clf.evaluate(test_sequences, test_labels)    # accuracy, macro F1, confusion matrix
>>> clf.save("vowels-model/"); rk.SequenceClassifier.load("vowels-model/")

The network classifies from the final state of the last recurrent layer (both directions when
bidirectional): the classic ``Embedding(V, 50) + LSTM + Dense(softmax)`` for texts.
"""

from __future__ import annotations

import numpy as np

from rnnkit.tasks.sequence import SequenceTask, classification_report
from rnnkit.tasks.trainer import check_training_options


class SequenceClassifier(SequenceTask):
    __doc__ = "One label per sequence. " + SequenceTask.__doc__
    TASK = "sequence-classifier"
    PER_STEP = False

    def fit(self, sequences, labels, epochs: int = 60, batch_size: int = 32, validation=None,
            **training) -> "SequenceClassifier":
        """Fit on ``sequences`` (``[T_i, F]`` arrays, strings or token lists) and one label each (any
        hashable; stored as strings). ``validation=(sequences, labels)`` adds a validation loss/accuracy
        and, with ``patience``, early stopping. Other ``training`` options go to
        :func:`rnnkit.tasks.trainer.fit_module` (checkpoints and resume, data-parallel, logs, callbacks)."""
        check_training_options(self, training)
        inputs = self._fit_inputs(sequences)
        labels = [str(label) for label in labels]
        if len(labels) != len(inputs):
            raise ValueError(f"got {len(inputs)} sequences but {len(labels)} labels")
        self.classes = sorted(set(labels))
        if len(self.classes) < 2:
            raise ValueError(f"need at least two classes to classify, got {self.classes}")
        held_out = None
        if validation is not None:
            held_out = (self._inputs(validation[0], "validation sequences"), self._indices(validation[1]))
        self._fit(inputs, self._indices(labels), held_out, epochs, batch_size, training)
        return self

    def predict_proba(self, sequences) -> np.ndarray:
        """Class probabilities ``[N, C]``, columns in the order of ``self.classes``."""
        return np.stack(self._logits(sequences))

    def predict(self, sequences) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(sequences).argmax(1)]

    def evaluate(self, sequences, labels) -> dict:
        """Accuracy, macro-averaged F1, and the confusion matrix (rows: true class, columns: predicted)."""
        truth = np.array(self._indices(labels))
        return classification_report(truth, self.predict_proba(sequences).argmax(1), self.classes)
