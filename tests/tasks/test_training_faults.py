"""Interrupting training: Ctrl-C keeps the last good checkpoint, and fit(resume=True) continues from it."""

import signal

import lightning.pytorch as pl
import pytest
import torch

import rnnkit as rk
from rnnkit.data.series import load_airline
from tests.helpers import InterruptAt


class EpochLog(pl.Callback):
    def __init__(self):
        self.epochs = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


def test_ctrl_c_keeps_the_last_good_checkpoint_and_resume_continues(tmp_path):
    _, passengers = load_airline()
    history = passengers[:-24]
    handler = signal.getsignal(signal.SIGINT)
    model = rk.Forecaster(season=12, seed=0)
    with pytest.raises(KeyboardInterrupt, match="interrupted at epoch 3: the last complete epoch is saved in "
                                                ".*last.ckpt; fit again with resume=True"):
        model.fit(history, epochs=6, progress=False, checkpoint_dir=tmp_path, callbacks=[InterruptAt(3)])
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C still works afterwards
    checkpoint = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2  # epochs 0, 1, 2 completed and saved whole

    log = EpochLog()
    model.fit(history, epochs=6, progress=False, checkpoint_dir=tmp_path, resume=True, callbacks=[log])
    assert log.epochs == [3, 4, 5]  # only the remaining epochs ran
    assert model.predict(history).mean.shape == (12,)


def test_resume_needs_a_checkpoint(tmp_path):
    _, passengers = load_airline()
    with pytest.raises(FileNotFoundError, match="no last.ckpt in .* to resume from"):
        rk.Forecaster(season=12).fit(passengers, epochs=1, progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        rk.Forecaster(season=12).fit(passengers, epochs=1, progress=False, resume=True)


def test_classifier_takes_callbacks_and_checkpoints(tmp_path):
    import numpy as np

    sequences = [np.random.default_rng(k).normal(size=(5, 2)) + (k % 2) for k in range(40)]
    labels = [str(k % 2) for k in range(40)]
    log = EpochLog()
    rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=3, progress=False, checkpoint_dir=tmp_path,
                                             callbacks=[log])
    assert log.epochs == [0, 1, 2] and (tmp_path / "last.ckpt").is_file()


@pytest.mark.parametrize("make, data, option, hint", [
    (lambda: rk.SequenceClassifier(), (["ab", "ba"], ["x", "y"]), "seed", r"SequenceClassifier\(\.\.\., seed=\.\.\.\)"),
    (lambda: rk.SequenceTagger(), ([["a"]], [["X"]]), "learning_rate", r"SequenceTagger\(\.\.\., learning_rate="),
    (lambda: rk.Forecaster(), (load_airline()[1],), "patiense", "did you mean 'patience'"),
    (lambda: rk.LanguageModel.from_text("abcabc"), ("abcabc",), "gradient_clip", "LanguageModel sets gradient_clip itself"),
    (lambda: rk.Seq2Seq(), (["ab"], ["ba"]), "beam", "the training options gradient_clip, patience"),
])
def test_fit_refuses_an_unknown_option_by_name_before_training(make, data, option, hint, monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("fit trained despite an unknown option")

    for module in ("sequence", "forecaster", "language_model", "translator"):  # where the tasks call it
        monkeypatch.setattr(f"rnnkit.tasks.{module}.fit_module", must_not_train)
    task = make()
    with pytest.raises(TypeError, match=rf"{type(task).__name__}\.fit\(\) got an unknown option '{option}'.*{hint}"):
        task.fit(*data, **{option: 1})
