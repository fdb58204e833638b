import csv
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rnnkit as rk
from rnnkit.training.callbacks import GradientNormMonitor


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = rk.GRU(2, 4), nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.rnn(x)[0][:, -1]), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def train(tmp_path, monitor, **trainer_options):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 6, 2), torch.randn(32, 1) * 10)
    trainer = pl.Trainer(max_steps=6, logger=CSVLogger(tmp_path), callbacks=[monitor], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                         **trainer_options)
    trainer.fit(Tiny(), DataLoader(data, batch_size=8))
    with open(f"{trainer.logger.log_dir}/metrics.csv") as stream:
        return [row for row in csv.DictReader(stream) if row.get("grad_norm/total")]


def test_logs_norms_before_and_after_clipping(tmp_path):
    rows = train(tmp_path, GradientNormMonitor(), gradient_clip_val=0.01)
    assert len(rows) == 6
    for row in rows:
        total, clipped = float(row["grad_norm/total"]), float(row["grad_norm/total_clipped"])
        assert total > 0.01
        assert clipped == pytest.approx(0.01, rel=1e-3)  # torch's clip_grad_norm_: c * g / (|g| + 1e-6)
        parts = [float(v) ** 2 for k, v in row.items() if k.startswith("grad_norm/") and v
                 and k.split("/", 1)[1] not in ("total", "total_clipped", "clipped_fraction")]
        assert total == pytest.approx(sum(parts) ** 0.5, rel=1e-5)  # per-module norms make up the total
        assert {"grad_norm/rnn.cells.0", "grad_norm/head"} <= set(row)
    assert float(rows[-1]["grad_norm/clipped_fraction"]) == 1.0


def test_without_clipping_norms_agree_and_nothing_counts_as_clipped(tmp_path):
    rows = train(tmp_path, GradientNormMonitor())
    for row in rows:
        assert float(row["grad_norm/total_clipped"]) == pytest.approx(float(row["grad_norm/total"]), rel=1e-9)
    assert float(rows[-1]["grad_norm/clipped_fraction"]) == 0.0


def test_warns_once_when_gradients_explode(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tmp_path, GradientNormMonitor(exploding_above=1e-3))
    messages = [str(w.message) for w in caught if "gradients are exploding" in str(w.message)]
    assert len(messages) == 1 and "clip by norm" in messages[0]


def test_bad_thresholds():
    with pytest.raises(ValueError, match="need 0 <= vanishing_below < exploding_above"):
        GradientNormMonitor(vanishing_below=10, exploding_above=1)
