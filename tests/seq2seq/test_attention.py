import numpy as np
import pytest
import torch

from rnnkit.seq2seq.attention import Attention


def closed_form(attention, query, keys, mask):
    """Loops over batch, step and source position: the equations, one number at a time."""
    B, T, _ = query.shape
    S = keys.shape[1]
    scores = np.full((B, T, S), -np.inf)
    for b in range(B):
        for t in range(T):
            for s in range(S):
                if not mask[b, s]:
                    continue
                h, hs = query[b, t].numpy(), keys[b, s].numpy()
                if attention.kind == "dot":
                    scores[b, t, s] = h @ hs
                elif attention.kind == "general":
                    scores[b, t, s] = h @ attention.weight.weight.detach().numpy() @ hs
                else:
                    W1 = attention.query_projection.weight.detach().numpy()
                    W2 = attention.key_projection.weight.detach().numpy()
                    v = attention.v.weight.detach().numpy()[0]
                    scores[b, t, s] = v @ np.tanh(W1 @ h + W2 @ hs)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return weights @ keys.numpy(), weights


@pytest.mark.parametrize(("queries", "sources"), [(3, 5), (6, 2), (1, 4)])
@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_scores_weights_and_context_match_the_equations(kind, queries, sources):
    """Fewer queries than keys (a decoder step) and more (the general score then projects the keys, not the
    queries); query and key sizes differ but for dot; with the keys' part of the score prepared once too."""
    torch.manual_seed(0)
    query_size = 4 if kind == "dot" else 3
    attention = Attention(query_size, 4, kind).double()
    query = torch.randn(2, queries, query_size, dtype=torch.float64)
    keys = torch.randn(2, sources, 4, dtype=torch.float64)
    mask = torch.ones(2, sources, dtype=torch.bool)
    mask[1, sources // 2 + 1:] = False
    expected_context, expected_weights = closed_form(attention, query, keys, mask)
    prepared = attention.prepare(keys)
    assert (prepared is not None) == (kind == "additive")
    for given in (None, prepared):
        context, weights = attention(query, keys, mask, prepared=given)
        np.testing.assert_allclose(weights.detach().numpy(), expected_weights, atol=1e-12)
        np.testing.assert_allclose(context.detach().numpy(), expected_context, atol=1e-12)
        np.testing.assert_allclose(weights.sum(-1).detach().numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_padding_gets_zero_weight_and_changing_it_changes_nothing(kind):
    torch.manual_seed(1)
    attention = Attention(4, 4, kind)
    query, keys = torch.randn(2, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    context, weights = attention(query, keys, mask)
    assert torch.equal(weights[0, 4:], torch.zeros(2))
    altered = keys.clone()
    altered[0, 4:] = 1e3
    context2, weights2 = attention(query, altered, mask)
    assert torch.equal(context[0], context2[0]) and torch.equal(weights, weights2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dot attention needs query_size == key_size, got 4 and 6"):
        Attention(4, 6, "dot")
    with pytest.raises(ValueError, match="kind must be one of 'dot', 'general', 'additive'; got 'cosine'"):
        Attention(4, 4, "cosine")
    with pytest.raises(ValueError, match="mask must have shape \\[B, S\\] = \\[2, 3\\]"):
        Attention(2, 2)(torch.zeros(2, 2), torch.zeros(2, 3, 2), torch.ones(2, 2, dtype=torch.bool))
