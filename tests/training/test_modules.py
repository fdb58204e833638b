"""The Lightning modules every task trains with: their optimiser and the epoch means they log."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rnnkit as rk
from rnnkit.tasks.trainer import fit_module
from rnnkit.training.modules import ClassificationModule, RegressionModule, adam
from rnnkit.training.tbptt import StatefulRegressor, TBPTTModule


def steps_of(optimizer, parameters, grads):
    for grad in grads:
        optimizer.zero_grad()
        for p, g in zip(parameters, grad):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach().clone() for p in parameters]


@pytest.mark.parametrize("weight_decay", [None, 0.1])
def test_adam_is_torchs_fused_kernel_and_steps_as_its_default_implementation(weight_decay):
    torch.manual_seed(0)
    start = [torch.randn(7, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(30)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    optimizer = adam(ours, 0.01, weight_decay)
    reference = (torch.optim.Adam(theirs, lr=0.01, foreach=False) if weight_decay is None
                 else torch.optim.AdamW(theirs, lr=0.01, weight_decay=weight_decay, foreach=False))
    assert type(optimizer) is type(reference) and optimizer.defaults["fused"] is True
    after = steps_of(optimizer, ours, grads)
    for a, b, before in zip(after, steps_of(reference, theirs, grads), start):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        assert (a - before).abs().min() > 1e-3  # every entry moved


def test_adam_falls_back_where_torch_has_no_fused_kernel(monkeypatch):
    made = []

    class NoFusedAdamW(torch.optim.AdamW):
        def __init__(self, params, fused=None, **options):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices")
            made.append(options)
            super().__init__(params, fused=fused, **options)

    monkeypatch.setattr(torch.optim, "AdamW", NoFusedAdamW)
    parameters = [nn.Parameter(torch.ones(3))]
    optimizer = adam((p for p in parameters), 0.5, 0.0)  # a generator, as Module.parameters() gives, read once
    assert isinstance(optimizer, NoFusedAdamW) and not optimizer.defaults["fused"]
    assert made == [{"lr": 0.5, "weight_decay": 0.0}] and optimizer.param_groups[0]["params"] == parameters


class LightningMeans(RegressionModule):
    """The reference: Lightning's own epoch reduction, self.log(on_epoch=True) at every step."""

    def loss(self, batch, stage):
        x, y = batch
        loss = nn.functional.mse_loss(self.network(x), y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        return loss


class Last(nn.Module):
    def forward(self, pair):
        return pair[0][:, -1]


def closed_form_mean(network, loader):
    """(sum over batches of batch size x batch MSE) / examples, as the epoch mean is defined."""
    with torch.no_grad():
        total = sum(len(x) * nn.functional.mse_loss(network(x), y) for x, y in loader)
    return total / len(loader.dataset)


def test_logged_epoch_means_equal_lightnings_reduction_and_the_closed_form():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(13, 6, 2), torch.randn(13, 1))  # batches of 5, 5, 3
    valid = TensorDataset(torch.randn(7, 6, 2), torch.randn(7, 1))
    metrics = []
    for module_class in (RegressionModule, LightningMeans):
        torch.manual_seed(1)
        network = nn.Sequential(rk.GRU(2, 4), Last(), nn.Linear(4, 1))
        module = module_class(network, learning_rate=0.0)  # weights stay put: every batch sees the same network
        trainer = fit_module(module, DataLoader(data, batch_size=5), DataLoader(valid, batch_size=4), epochs=2,
                             progress=False)
        metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        network.eval()
        expected = {"train_loss": closed_form_mean(network, DataLoader(data, batch_size=5)),
                    "val_loss": closed_form_mean(network, DataLoader(valid, batch_size=4))}
        for name, value in expected.items():
            assert metrics[-1][name] == pytest.approx(float(value), rel=1e-6)
    assert metrics[0] == pytest.approx(metrics[1], rel=1e-6)
    assert set(metrics[0]) == {"train_loss", "val_loss"}


def test_classification_accuracy_is_the_epoch_mean_over_batches():
    torch.manual_seed(0)
    x = torch.randn(10, 4, 3)
    lengths = torch.full((10,), 4)
    y = torch.tensor([0, 1, 1, 0, 2, 1, 0, 2, 2, 1])
    network = Classifier()
    module = ClassificationModule(network, learning_rate=0.0)
    loader = DataLoader(TensorDataset(x, lengths, y), batch_size=4)  # 4, 4, 2
    trainer = fit_module(module, loader, None, epochs=1, progress=False)
    with torch.no_grad():
        right = (network(x, lengths).argmax(1) == y).float()
    per_batch = [right[:4].mean() * 4, right[4:8].mean() * 4, right[8:].mean() * 2]
    assert float(trainer.callback_metrics["train_accuracy"]) == pytest.approx(float(sum(per_batch) / 10), rel=1e-6)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = rk.LSTM(3, 5), nn.Linear(5, 3)

    def forward(self, x, lengths):
        return self.head(self.rnn(x, lengths=lengths)[1][0][-1])


def test_tbptt_logs_the_batch_size_weighted_mean_of_its_chunk_means():
    torch.manual_seed(0)
    network = StatefulRegressor(rk.GRU(2, 3), 1)
    x, y = torch.randn(5, 12, 2), torch.randn(5, 12, 1)
    module = TBPTTModule(network, k=4, learning_rate=0.0)
    trainer = fit_module(module, DataLoader(TensorDataset(x, y), batch_size=3), None, epochs=1, gradient_clip=None,
                         progress=False)

    def chunk_mean(xb, yb):  # the mean of the chunk losses, the state carried (nothing learns at lr 0)
        state, losses = None, []
        for start in range(0, 12, 4):
            out, state = network(xb[:, start:start + 4], state)
            losses.append(nn.functional.mse_loss(out, yb[:, start:start + 4]))
        return torch.stack(losses).mean()

    with torch.no_grad():
        expected = (3 * chunk_mean(x[:3], y[:3]) + 2 * chunk_mean(x[3:], y[3:])) / 5
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(float(expected), rel=1e-6)
