import math

import pytest
import torch

from rnnkit.data import AddingTask, CopyTask


def test_adding_problem_structure_and_trivial_baseline():
    task = AddingTask(30)
    x, y = task.batch(200_000, torch.Generator().manual_seed(0))
    assert x.shape == (200_000, 30, 2) and y.shape == (200_000, 1)
    markers = x[..., 1]
    assert bool((markers.sum(1) == 2).all())
    assert bool((markers[:, :15].sum(1) == 1).all())  # one marker in each half
    torch.testing.assert_close(y[:, 0], (x[..., 0] * markers).sum(1))
    empirical = torch.nn.functional.mse_loss(torch.ones_like(y), y).item()
    assert empirical == pytest.approx(task.baseline_mse, abs=2e-3)  # Var(U+U) = 1/6
    assert task.baseline_mse == pytest.approx(0.1667, abs=1e-4)


def test_copy_problem_structure_and_trivial_baseline():
    task = CopyTask(delay=25)
    x, y = task.batch(64, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 45)
    assert bool((x[:, 34] == 9).all()) and int((x == 9).sum()) == 64  # one delimiter, T + 9
    torch.testing.assert_close(y[:, -10:], x[:, :10])
    assert int(y[:, :-10].abs().sum()) == 0
    # the trivial predictor: certain blank, then uniform over the 8 symbols
    logits = torch.full((64, 45, 9), -1e9)
    logits[:, :-10, 0] = 0.0
    logits[:, -10:, 1:] = 0.0
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), y.reshape(-1)).item()
    assert loss == pytest.approx(task.baseline_cross_entropy, rel=1e-6)
    assert task.baseline_cross_entropy == pytest.approx(10 * math.log(8) / 45)


def test_same_seed_same_batches():
    a = AddingTask(10).batch(4, torch.Generator().manual_seed(3))
    b = AddingTask(10).batch(4, torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: AddingTask(1), "steps must be >= 2"),
    (lambda: AddingTask(0), "steps must be a positive integer, got 0"),
    (lambda: CopyTask(0), "delay must be a positive integer, got 0"),
    (lambda: AddingTask(5).batch(0), "size must be a positive integer, got 0"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
