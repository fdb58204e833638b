"""One-to-many: a sequence generated from a vector."""

import pytest
import torch

from rnnkit.seq2seq import EOS, GO, VectorToSequence


def data():
    """Class k (one-hot) -> symbol 4+k repeated k+1 times: the vector decides both content and length."""
    vectors = torch.eye(4)
    targets = [[4 + k] * (k + 1) for k in range(4)]
    target = torch.zeros(4, 6, dtype=torch.long)
    for k, row in enumerate(targets):
        target[k, : len(row) + 2] = torch.tensor([GO, *row, EOS])
    return vectors, targets, target


def test_generates_the_sequence_each_vector_stands_for():
    torch.manual_seed(0)
    model = VectorToSequence(4, 8, embedding_dim=8, hidden_size=16)
    vectors, targets, target = data()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        log_probs, _ = model(vectors, None, target[:, :-1])
        loss = torch.nn.functional.nll_loss(log_probs.reshape(-1, 8), target[:, 1:].reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.greedy(vectors, None, max_length=8)[0] == targets
    assert model.beam_search(vectors, None, width=3, max_length=8)[0] == targets


def test_vector_shape_is_checked():
    with pytest.raises(ValueError, match="vectors must have shape \\[B, 4\\], got \\[2, 3\\]"):
        VectorToSequence(4, 8).greedy(torch.zeros(2, 3), None)


def test_teacher_forcing_runs_every_step_at_once_as_the_step_loop_would():
    from tests.seq2seq.test_model import _whole_and_stepwise

    torch.manual_seed(3)
    model = VectorToSequence(vector_size=5, target_vocabulary=9, embedding_dim=4, hidden_size=6, cell="lstm").double()
    vectors = torch.randn(3, 5, dtype=torch.float64)
    target_in = torch.tensor([[2, 4, 5, 6], [2, 7, 0, 0], [2, 8, 4, 0]])
    (whole, _, whole_grads), (steps, _, step_grads) = _whole_and_stepwise(model, vectors, None, target_in)
    torch.testing.assert_close(whole, steps, atol=1e-12, rtol=1e-10)
    for a, b in zip(whole_grads, step_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
