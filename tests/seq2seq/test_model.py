import pytest
import torch

from rnnkit.seq2seq import EOS, GO, Seq2SeqNetwork as Seq2Seq

SYMBOLS = range(4, 12)  # ids 0-3 are <pad>, <unk>, <go>, <eos>


def batch(count, generator, reverse=True, min_len=3, max_len=7):
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=generator)
    source = torch.zeros(count, max_len, dtype=torch.long)
    target = torch.zeros(count, max_len + 2, dtype=torch.long)  # <go> ... <eos>
    for b, n in enumerate(lengths.tolist()):
        tokens = torch.randint(SYMBOLS.start, SYMBOLS.stop, (n,), generator=generator)
        source[b, :n] = tokens
        out = tokens.flip(0) if reverse else tokens
        target[b, 0], target[b, 1:n + 1], target[b, n + 1] = GO, out, EOS
    return source, lengths, target


def train(model, steps, seed=0, max_len=5):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    for _ in range(steps):
        source, lengths, target = batch(64, generator, max_len=max_len)
        log_probs, _ = model(source, lengths, target[:, :-1])
        loss = torch.nn.functional.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), target[:, 1:].reshape(-1),
                                            ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model


@pytest.fixture(scope="module")
def reverser():
    torch.manual_seed(0)
    return train(Seq2Seq(12, 12, embedding_dim=16, hidden_size=48, attention="general"), 400)


def test_a_tiny_reverse_task_is_learned_exactly(reverser):
    source, lengths, target = batch(200, torch.Generator().manual_seed(99), max_len=5)  # reverse 3-5 symbols
    predicted, _ = reverser.greedy(source, lengths, max_length=8)
    expected = [row[1:n + 1].tolist() for row, n in zip(target, lengths.tolist())]
    assert sum(p == e for p, e in zip(predicted, expected)) == 200  # 100% exact match


def test_beam_of_width_one_equals_greedy(reverser):
    torch.manual_seed(3)
    model = Seq2Seq(12, 12, embedding_dim=8, hidden_size=16)  # untrained: many plausible tokens
    source, lengths, _ = batch(20, torch.Generator().manual_seed(5))
    for m in (model, reverser):
        greedy, greedy_scores = m.greedy(source, lengths, max_length=9)
        beam, beam_scores = m.beam_search(source, lengths, width=1, max_length=9)
        assert beam == greedy
        torch.testing.assert_close(beam_scores, greedy_scores)


@pytest.mark.parametrize("width", [2, 5])
def test_beam_scores_equal_the_models_log_probability_of_the_returned_sequence(width):
    torch.manual_seed(4)
    model = Seq2Seq(12, 12, embedding_dim=8, hidden_size=16, attention="additive")
    source, lengths, _ = batch(10, torch.Generator().manual_seed(6))
    sequences, scores = model.beam_search(source, lengths, width=width, max_length=6)
    for b, sequence in enumerate(sequences):
        ended = len(sequence) < 6  # stopped by <eos> rather than by max_length
        out = torch.tensor(sequence + ([EOS] if ended else []))
        target_in = torch.cat([torch.tensor([GO]), out[:-1]])[None]
        log_probs, _ = model(source[b:b + 1], lengths[b:b + 1], target_in)
        expected = log_probs[0].gather(1, out[:, None]).sum()
        torch.testing.assert_close(scores[b], expected, atol=1e-5, rtol=1e-5)


def test_attention_weights_are_returned_and_ignore_padding(reverser):
    source, lengths, target = batch(4, torch.Generator().manual_seed(7))
    _, weights = reverser(source, lengths, target[:, :-1])
    assert weights.shape == (4, target.shape[1] - 1, source.shape[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    for b, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(weights[b, :, n:]) == 0


def test_scheduled_teacher_forcing_feeds_own_predictions():
    torch.manual_seed(0)
    model = Seq2Seq(12, 12, embedding_dim=8, hidden_size=16)
    source, lengths, target = batch(8, torch.Generator().manual_seed(1))
    forced, _ = model(source, lengths, target[:, :-1], teacher_forcing=1.0)
    garbage = target.clone()
    garbage[:, 1:] = 5  # wrong tokens everywhere but <go>
    own, _ = model(source, lengths, garbage[:, :-1], teacher_forcing=0.0)
    expected = torch.stack(  # feeding its own argmax, step by step
        [model(source, lengths, torch.cat([target[:, :1], own.argmax(-1)[:, :t]], 1))[0][:, t]
         for t in range(own.shape[1])], 1)
    torch.testing.assert_close(own, expected)
    assert not torch.allclose(own, forced)
    with pytest.raises(ValueError, match="teacher_forcing must be a ratio in \\[0, 1\\], got 1.5"):
        model(source, lengths, target, teacher_forcing=1.5)


def test_sampling_draws_from_the_model_and_scores_what_it_drew(reverser):
    torch.manual_seed(5)
    model = Seq2Seq(12, 12, embedding_dim=8, hidden_size=16)  # untrained: sampling spreads out
    source, lengths, _ = batch(6, torch.Generator().manual_seed(8))
    first = model.sample(source, lengths, 6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    again = model.sample(source, lengths, 6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    other = model.sample(source, lengths, 6, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert first[0] == again[0] and first[0] != other[0]
    for b, sequence in enumerate(first[0]):  # the score is the model's log-probability of the draw
        ended = len(sequence) < 6
        out = torch.tensor(sequence + ([EOS] if ended else []))
        log_probs, _ = model(source[b:b + 1], lengths[b:b + 1], torch.cat([torch.tensor([GO]), out[:-1]])[None])
        torch.testing.assert_close(first[1][b], log_probs[0].gather(1, out[:, None]).sum(), atol=1e-5, rtol=1e-5)
    assert model.sample(source, lengths, 6, temperature=0.0)[0] == model.greedy(source, lengths, 6)[0]
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        model.sample(source, lengths, temperature=-1)


@pytest.mark.parametrize("attention", ["general", "additive"])
def test_teacher_forced_steps_follow_luongs_equations(attention):
    """Every step's log-probabilities and attention weights, written out from the equations with the model's
    weights: the encoder's outputs as keys (the general score's W, the additive score's W_2 applied to them as the
    equations say, not as the model arranges the products), input feeding, the combination and the softmax."""
    torch.manual_seed(2)
    model = Seq2Seq(12, 12, embedding_dim=8, hidden_size=16, attention=attention).double()
    source, lengths, target = batch(5, torch.Generator().manual_seed(3))
    target_in = target[:, :-1]
    log_probs, weights = model(source, lengths, target_in)

    keys, final = model.encoder(model.source_embedding(source), lengths=lengths)  # [B, S, 2H]
    h = torch.tanh(model.bridges[0](final[-2:].transpose(0, 1).reshape(source.shape[0], -1)))
    mask = torch.arange(source.shape[1])[None, :] < lengths[:, None]
    feed = torch.zeros_like(h)
    score = model.attention
    for t in range(target_in.shape[1]):
        _, (h,) = model.decoder(torch.cat([model.target_embedding(target_in[:, t]), feed], -1), (h,))
        if attention == "general":
            scores = torch.einsum("bq,bsq->bs", h, keys @ score.weight.weight.T)
        else:
            hidden = torch.tanh((h @ score.query_projection.weight.T)[:, None] + keys @ score.key_projection.weight.T)
            scores = (hidden @ score.v.weight.T)[..., 0]
        alpha = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
        feed = torch.tanh(model.combine(torch.cat([torch.einsum("bs,bsk->bk", alpha, keys), h], -1)))
        torch.testing.assert_close(weights[:, t], alpha, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(log_probs[:, t], torch.log_softmax(model.output(feed), -1), atol=1e-12, rtol=1e-12)


def _whole_and_stepwise(model, source, lengths, target_in):
    """``model``'s teacher-forced forward (every step at once where it can) and the same through its step loop,
    each with the gradients of every parameter."""
    results = []
    for whole in (True, False):
        if not whole:
            model.teacher_forced = lambda *args: None  # (an instance attribute: the Decoder's loop then)
        log_probs, weights = model(source, lengths, target_in)
        grads = torch.autograd.grad(log_probs.exp().mul(torch.linspace(0, 1, log_probs.shape[-1])).sum(),
                                    list(model.parameters()), allow_unused=True)
        results.append((log_probs, weights, grads))
    del model.teacher_forced
    return results


@pytest.mark.parametrize("attention", ["general", "additive", "dot", None])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_without_input_feeding_teacher_forcing_runs_every_step_at_once(attention, cell):
    torch.manual_seed(5)
    model = Seq2Seq(12, 12, embedding_dim=8, hidden_size=6, cell=cell, attention=attention, input_feeding=False,
                    bidirectional=attention != "dot").double()
    source, lengths, target = batch(4, torch.Generator().manual_seed(8))
    assert model.teacher_forced(source, lengths, target[:, :-1]) is not None
    (whole, whole_weights, whole_grads), (steps, step_weights, step_grads) = _whole_and_stepwise(
        model, source, lengths, target[:, :-1])
    torch.testing.assert_close(whole, steps, atol=1e-12, rtol=1e-10)
    if attention is None:
        assert whole_weights is None and step_weights is None
    else:
        torch.testing.assert_close(whole_weights, step_weights, atol=1e-12, rtol=1e-10)
    for a, b in zip(whole_grads, step_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_input_feeding_keeps_the_step_loop():
    model = Seq2Seq(12, 12, embedding_dim=8, hidden_size=6)  # input feeding: a step reads the one before
    source, lengths, target = batch(2, torch.Generator().manual_seed(9))
    assert model.teacher_forced(source, lengths, target[:, :-1]) is None
