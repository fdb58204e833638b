"""Learning-rate schedules (fit(lr_schedule=...)): every optimizer step's learning rate against the schedule's closed
form or an independent re-implementation of its rule, for automatic (classifier) and manual (truncated BPTT)
optimisation, across an interrupted and resumed fit, and the errors."""

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import rnnkit as rk
from rnnkit.tasks.trainer import fit_module
from rnnkit.training.logs import read_training_log
from tests.helpers import InterruptAt

LR = 3e-3  # the tasks' default learning rate


class Rates(pl.Callback):
    """The learning rate each training batch and epoch starts with, and the Trainer's metrics at each epoch's end
    (the validation's of this epoch; the training means appear in them only after this hook)."""

    def __init__(self):
        self.per_batch, self.per_epoch, self.losses = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.per_epoch.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.per_batch.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):  # (the module's hook ran first: this epoch's means are logged)
        self.losses.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def classification_data(count=48, random_labels=False):
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(6, 3)) + (k % 2) for k in range(count)]
    labels = [str(rng.integers(2) if random_labels else k % 2) for k in range(count)]
    return sequences, labels


def cosine_rates(steps, start=LR):
    """The cosine schedule's rate at each of ``steps`` optimizer steps: start (1 + cos(pi k / steps)) / 2."""
    return [start * 0.5 * (1 + math.cos(math.pi * k / steps)) for k in range(steps)]


def plateau_rates(losses, start, patience=2, factor=0.5, threshold=1e-4):
    """The learning rate of each epoch under "halve once more than ``patience`` epochs in a row have not improved on
    the best loss by a relative ``threshold``", written out from the epochs' losses (the rule, not torch's code)."""
    rates, rate, best, bad = [start], start, math.inf, 0
    for loss in losses[:-1]:
        if loss < best * (1 - threshold):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > patience:
            rate, bad = rate * factor, 0
        rates.append(rate)
    return rates


def test_cosine_follows_its_closed_form_every_step():
    sequences, labels = classification_data()
    rates = Rates()
    rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=3, batch_size=16, progress=False,
                                             callbacks=[rates], lr_schedule="cosine")
    total = 3 * 3  # epochs x batches of 16 from 48
    assert rates.per_batch == pytest.approx(cosine_rates(total), rel=1e-12)
    assert rates.per_batch[0] == LR and rates.per_batch[-1] < 0.04 * LR


def test_constant_is_the_default_and_leaves_the_rate():
    sequences, labels = classification_data()
    rates = Rates()
    rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=2, batch_size=16, progress=False,
                                             callbacks=[rates])
    assert rates.per_batch == [LR] * 6


def test_plateau_halves_after_three_epochs_without_a_lower_validation_loss():
    # random labels: the validation loss rises as the network memorises the training set
    sequences, labels = classification_data(random_labels=True)
    rates = Rates()
    model = rk.SequenceClassifier(hidden_size=16, learning_rate=0.03)
    model.fit(sequences[:32], labels[:32], epochs=12, batch_size=8, progress=False, callbacks=[rates],
              validation=(sequences[32:], labels[32:]), lr_schedule="plateau")
    losses = [epoch["val_loss"] for epoch in rates.losses]
    assert rates.per_epoch == pytest.approx(plateau_rates(losses, 0.03), rel=1e-12)
    assert min(rates.per_epoch) <= 0.03 / 4  # it did halve, twice at least (else this test proves little)


def test_truncated_bptt_steps_the_cosine_once_a_batch_and_the_plateau_on_the_training_loss(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 30
    rates = Rates()
    lm = rk.LanguageModel.from_text(text, hidden_size=16)
    lm.fit(text, epochs=4, batch_size=8, bptt=20, progress=False, callbacks=[rates], lr_schedule="cosine")
    assert rates.per_batch == pytest.approx(cosine_rates(4), rel=1e-12)

    rates = Rates()  # a learning rate large enough for the training loss to stall and jump about
    lm = rk.LanguageModel.from_text(text, hidden_size=16, learning_rate=0.3)
    lm.fit(text, epochs=12, batch_size=8, bptt=20, progress=False, callbacks=[rates], lr_schedule="plateau",
           log_dir=tmp_path)
    losses = [loss for _, loss in read_training_log(tmp_path)["train_loss"]]
    assert rates.per_epoch == pytest.approx(plateau_rates(losses, 0.3), rel=1e-12)
    assert min(rates.per_epoch) < 0.3


def test_a_function_makes_the_scheduler():
    sequences, labels = classification_data()
    rates = Rates()
    seen = []

    def halve_every_epoch(optimizer, total_steps):
        seen.append(total_steps)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=3, batch_size=16, progress=False,
                                             callbacks=[rates], lr_schedule=halve_every_epoch)
    assert seen == [9] and rates.per_epoch == pytest.approx([LR, LR / 2, LR / 4], rel=1e-12)

    rates = Rates()  # a Lightning dict: stepped every batch
    rk.SequenceClassifier(hidden_size=8).fit(
        sequences, labels, epochs=2, batch_size=16, progress=False, callbacks=[rates],
        lr_schedule=lambda optimizer, steps: {"scheduler": torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9),
                                              "interval": "step"})
    assert rates.per_batch == pytest.approx([LR * 0.9 ** k for k in range(6)], rel=1e-12)


def test_resume_continues_the_schedule(tmp_path):
    sequences, labels = classification_data()
    whole = Rates()
    rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=4, batch_size=16, progress=False,
                                             callbacks=[whole], lr_schedule="cosine")
    first, second = Rates(), Rates()
    model = rk.SequenceClassifier(hidden_size=8)
    with pytest.raises(KeyboardInterrupt):
        model.fit(sequences, labels, epochs=4, batch_size=16, progress=False, callbacks=[first, InterruptAt(2)],
                  checkpoint_dir=tmp_path, lr_schedule="cosine")
    model.fit(sequences, labels, epochs=4, batch_size=16, progress=False, callbacks=[second],
              checkpoint_dir=tmp_path, resume=True, lr_schedule="cosine")
    assert len(first.per_batch) == 6 and len(second.per_batch) == 6
    assert first.per_batch + second.per_batch == pytest.approx(whole.per_batch, rel=1e-12)


def test_resume_continues_a_plateau_schedule_with_the_saved_epochs_losses(tmp_path):
    # Lightning steps a plateau scheduler after saving the epoch's checkpoint: left to it, the resumed fit below
    # halves an epoch later than the whole one
    sequences, labels = classification_data(random_labels=True)

    def fit(callbacks, **options):
        rk.SequenceClassifier(hidden_size=16, learning_rate=0.03).fit(
            sequences[:32], labels[:32], epochs=12, batch_size=8, progress=False, callbacks=callbacks,
            validation=(sequences[32:], labels[32:]), lr_schedule="plateau", **options)

    whole, first, second = Rates(), Rates(), Rates()
    fit([whole])
    with pytest.raises(KeyboardInterrupt):
        fit([first, InterruptAt(5)], checkpoint_dir=tmp_path)
    fit([second], checkpoint_dir=tmp_path, resume=True)
    assert first.per_epoch[:5] + second.per_epoch == pytest.approx(whole.per_epoch, rel=1e-12)
    assert len(set(whole.per_epoch[4:])) >= 3  # it halved after the interruption too


def test_the_learning_rate_is_logged(tmp_path):
    sequences, labels = classification_data()
    rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=2, batch_size=16, progress=False,
                                             log_dir=tmp_path, lr_schedule="cosine")
    epochs, logged = zip(*read_training_log(tmp_path)["lr"])  # once a step, with the step's epoch
    assert logged == pytest.approx(cosine_rates(6), rel=1e-6)
    assert epochs == (0, 0, 0, 1, 1, 1)


@pytest.mark.parametrize("schedule, message", [
    ("cosin", r"lr_schedule must be one of 'constant', 'cosine', 'plateau'; got 'cosin'"),
    (0.5, r"lr_schedule must be one of constant, cosine, plateau or a function \(optimizer, total_steps\) "
          r"-> scheduler, got 0.5"),
])
def test_an_unknown_schedule_is_refused_before_training(schedule, message):
    sequences, labels = classification_data()
    with pytest.raises(ValueError, match=message):
        rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=1, progress=False, lr_schedule=schedule)


def test_a_function_that_makes_no_scheduler_is_refused():
    sequences, labels = classification_data()
    with pytest.raises(ValueError, match="lr_schedule must return a torch.optim.lr_scheduler scheduler or a "
                                         "Lightning lr_scheduler dict, got float"):
        rk.SequenceClassifier(hidden_size=8).fit(sequences, labels, epochs=1, progress=False,
                                                 lr_schedule=lambda optimizer, steps: 0.5)


def test_a_module_of_ones_own_cannot_take_a_schedule():
    class Own(pl.LightningModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), 0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), batch_size=2)
    with pytest.raises(TypeError, match="lr_schedule='cosine' needs one of rnnkit's training modules; Own "
                                        "configures its own optimizer"):
        fit_module(Own(), loader, None, 1, lr_schedule="cosine", progress=False)


class Stop(Exception):
    pass


@pytest.mark.parametrize("command, module", [
    (["forecast", "--dataset", "airline"], "forecaster"),
    (["classify", "--dataset", "ItalyPowerDemand"], "sequence"),
    (["generate", "--corpus", "hamlet"], "language_model"),
    (["translate", "--dataset", "cmudict"], "translator"),
])
def test_the_training_commands_pass_lr_schedule_to_fit(command, module, monkeypatch):
    from typer.testing import CliRunner

    from rnnkit.cli import app

    seen = []

    def spy(*args, lr_schedule="constant", **kwargs):
        seen.append(lr_schedule)
        raise Stop

    monkeypatch.setattr(f"rnnkit.tasks.{module}.fit_module", spy)
    result = CliRunner().invoke(app, [*command, "--epochs", "1", "--lr-schedule", "plateau"])
    assert isinstance(result.exception, Stop), result.output
    assert seen == ["plateau"]


def test_the_tag_command_trains_with_a_schedule_and_refuses_an_unknown_one(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import rnnkit.tasks.sequence
    from rnnkit.cli import app

    seen = []

    def spy(*args, lr_schedule="constant", **kwargs):
        seen.append(lr_schedule)
        return fit_module(*args, lr_schedule=lr_schedule, **kwargs)

    monkeypatch.setattr(rnnkit.tasks.sequence, "fit_module", spy)
    lines = [f"{w}\t{'D' if w == 'the' else 'W'}" for w in ["the", "cat", "sat"] * 20] + [""]
    (tmp_path / "train.tsv").write_text("\n".join(lines))
    result = CliRunner().invoke(app, ["tag", str(tmp_path / "train.tsv"), "--epochs", "2", "--hidden", "8",
                                      "--lr-schedule", "cosine"])
    assert result.exit_code == 0, result.output
    assert seen == ["cosine"]
    result = CliRunner().invoke(app, ["tag", str(tmp_path / "train.tsv"), "--lr-schedule", "linear"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "lr_schedule must be one of 'constant', 'cosine', 'plateau'; got 'linear'" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classifier", "seq2seq"])
def test_data_parallel_fits_of_the_padded_tasks_with_a_schedule(task, tmp_path):
    # ddp_spawn pickles the loaders into its processes: their collate functions were closures, and every task but
    # the forecaster and the language model failed with "Can't pickle local object"
    if task == "classifier":
        sequences, labels = classification_data(count=64)
        model = rk.SequenceClassifier(hidden_size=8)
    else:
        sequences = ["abc", "bca", "cab", "acb"] * 16
        labels = [s[::-1] for s in sequences]
        model = rk.Seq2Seq(hidden_size=16)
    model.fit(sequences, labels, epochs=2, batch_size=16, progress=False, devices=2, strategy="ddp_spawn",
              lr_schedule="cosine", log_dir=tmp_path)
    # each process takes half of the 4 batches an epoch: 4 optimizer steps in all, the cosine over those 4
    logged = [value for _, value in read_training_log(tmp_path)["lr"]]
    assert logged == pytest.approx(cosine_rates(4), rel=1e-6)
    assert len(model.predict(sequences[:3])) == 3
