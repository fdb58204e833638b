"""Tagging: a label for every step of a sequence (many-to-many, synchronised).

>>> tagger = rk.SequenceTagger(cell="lstm", hidden_size=64)    # bidirectional by default
>>> tagger.fit(token_lists, tag_lists)        # e.g. [["the", "cat"], ...] with [["DET", "NOUN"], ...]
>>> tagger.fit(frame_arrays, frame_labels)    # or [T_i, F] arrays with T_i labels each (frame tagging)
>>> tagger.predict(token_lists)               # a list of tags per sequence
>>> tagger.evaluate(token_lists, tag_lists)   # per-step accuracy, macro F1, confusion matrix

Every step's output goes through the same linear layer; padded steps are left out of the loss and the
metrics. Unknown tokens map to ``<unk>``.
"""

from __future__ import annotations

import numpy as np

from rnnkit.tasks.sequence import SequenceTask, classification_report
from rnnkit.tasks.trainer import check_training_options


class SequenceTagger(SequenceTask):
    __doc__ = "One label per step. " + SequenceTask.__doc__
    TASK = "sequence-tagger"
    PER_STEP = True

    def _step_indices(self, inputs, tags, name: str) -> list[list[int]]:
        if len(tags) != len(inputs):
            raise ValueError(f"got {len(inputs)} sequences but {len(tags)} tag sequences")
        out = []
        for index, (x, row) in enumerate(zip(inputs, tags)):
            if len(row) != len(x):
                raise ValueError(f"{name}[{index}] has {len(row)} tags for {len(x)} steps; give one tag per step")
            out.append(self._indices(row))
        return out

    def fit(self, sequences, tags, epochs: int = 60, batch_size: int = 32, validation=None,
            **training) -> "SequenceTagger":
        """Fit on ``sequences`` (token lists or ``[T_i, F]`` arrays) and one tag per step of each.
        ``validation=(sequences, tags)`` adds a validation loss/accuracy and, with ``patience``, early stopping. Other ``training`` options go to
        :func:`rnnkit.tasks.trainer.fit_module` (checkpoints and resume, data-parallel, logs, callbacks)."""
        check_training_options(self, training)
        inputs = self._fit_inputs(sequences)
        tags = [[str(tag) for tag in row] for row in tags]
        self.classes = sorted({tag for row in tags for tag in row})
        targets = self._step_indices(inputs, tags, "tags")
        held_out = None
        if validation is not None:
            valid_inputs = self._inputs(validation[0], "validation sequences")
            held_out = (valid_inputs, self._step_indices(valid_inputs, validation[1], "validation tags"))
        self._fit(inputs, targets, held_out, epochs, batch_size, training)
        return self

    def predict_proba(self, sequences) -> list[np.ndarray]:
        """Per sequence, ``[T_i, C]`` tag probabilities, columns in the order of ``self.classes``."""
        return self._logits(sequences)

    def predict(self, sequences) -> list[list[str]]:
        return [[self.classes[i] for i in p.argmax(1)] for p in self.predict_proba(sequences)]

    def evaluate(self, sequences, tags) -> dict:
        """Per-step accuracy, macro-averaged F1 and the confusion matrix, over every real (unpadded) step."""
        probabilities = self.predict_proba(sequences)
        truth = np.concatenate(self._step_indices(probabilities, tags, "tags"))
        predicted = np.concatenate([p.argmax(1) for p in probabilities])
        return classification_report(truth, predicted, self.classes)
