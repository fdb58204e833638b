import math

import pytest
import torch

import rnnkit as rk
from rnnkit.data.text import SPECIALS
from rnnkit.tasks.language_model import filter_logits

TEXT = "the cat sat on the mat. " * 40


@pytest.fixture(scope="module")
def trained():
    lm = rk.LanguageModel.from_text(TEXT, level="char", hidden_size=32, embedding_dim=16, seed=0)
    return lm.fit(TEXT, epochs=40, batch_size=8, bptt=20, progress=False)


def test_nucleus_and_top_k_filters_against_a_known_distribution():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))
    kept = lambda scores: torch.isfinite(scores).nonzero().view(-1).tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_p=0.7)) == [1, 3]  # 0.5, then 0.3 reaches 0.8 >= 0.7
    assert kept(filter_logits(logits, top_p=0.8)) == [1, 3]  # exactly 0.8 is enough
    assert kept(filter_logits(logits, top_p=0.81)) == [1, 2, 3]
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_k=10)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="top_p must be in \\(0, 1\\], got 0"):
        filter_logits(logits, top_p=0)


def test_perplexity_falls_to_near_one_on_a_deterministic_text(trained):
    untrained = rk.LanguageModel.from_text(TEXT, level="char", hidden_size=32, embedding_dim=16, seed=0)
    vocabulary = len(untrained.vocabulary)
    assert untrained.perplexity(TEXT) > 0.5 * vocabulary  # near uniform before training
    assert trained.perplexity(TEXT) < 1.3
    assert trained.bits_per_character(TEXT) == pytest.approx(math.log2(trained.perplexity(TEXT)))


def test_generation_continues_the_prime_and_is_reproducible(trained):
    first = trained.generate("the c", length=30, temperature=0.5, seed=1)
    assert first.startswith("the c") and len(first) == len("the c") + 30
    assert first == trained.generate("the c", length=30, temperature=0.5, seed=1)
    greedy = trained.generate("the c", length=18, top_k=1, seed=2)  # top-1: the most likely character each time
    assert greedy == trained.generate("the c", length=18, top_k=1, seed=3) == "the cat sat on the mat."


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_generation_draws_each_token_from_the_whole_sequence_s_scores(cell):
    """generate feeds the network one token a call, carrying the state (in inference mode); replaying its draws
    from one call over the whole generated sequence (another engine path: every step in one layer call, under
    autograd's normal mode) with the same generator gives the same tokens. Untrained, temperature 1.5: the
    draws are far from certain."""
    lm = rk.LanguageModel.from_text(TEXT, level="char", cell=cell, hidden_size=24, embedding_dim=8, seed=3)
    lm.network.eval()
    text = lm.generate("the c", length=60, temperature=1.5, seed=7)
    ids = lm.vocabulary.encode(text)
    logits, _ = lm.network(torch.tensor(ids[:-1])[None])
    generator = torch.Generator().manual_seed(7)
    replayed = []
    for position in range(len("the c") - 1, len(ids) - 1):
        scores = logits[0, position].detach() / 1.5
        scores[: len(SPECIALS)] = float("-inf")  # <pad>, <unk>, <go>, <eos>: never generated
        replayed.append(int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)))
    assert replayed == ids[len("the c"):]
    assert len(set(replayed)) > 5  # the draws vary: a real test of the sampling, not of a certain argmax


def test_tied_embeddings_are_one_tensor_and_survive_save_and_load(tmp_path):
    lm = rk.LanguageModel.from_text(TEXT, hidden_size=16, embedding_dim=16, tie_embeddings=True)
    assert lm.network.output.weight is lm.network.embedding.weight
    lm.fit(TEXT, epochs=2, batch_size=4, bptt=10, progress=False)
    lm.save(tmp_path / "lm")
    loaded = rk.LanguageModel.load(tmp_path / "lm")
    assert loaded.network.output.weight is loaded.network.embedding.weight
    assert loaded.perplexity(TEXT) == pytest.approx(lm.perplexity(TEXT), rel=1e-6)
    with pytest.raises(ValueError, match="tie_embeddings needs hidden_size == embedding_dim, got 32 and 16"):
        rk.LanguageModel.from_text(TEXT, hidden_size=32, embedding_dim=16, tie_embeddings=True)


def test_word_level_and_bad_input():
    lm = rk.LanguageModel.from_text(TEXT, level="word", hidden_size=8, embedding_dim=8)
    assert lm.vocabulary.tokens[4:] == ["the", ".", "cat", "mat", "on", "sat"]
    assert lm.generate("the", length=3, seed=0).startswith("the ")
    with pytest.raises(ValueError, match="prime must contain at least one word token"):
        lm.generate("   ")
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        lm.generate("the", temperature=0)
    with pytest.raises(ValueError, match="text needs at least two word tokens"):
        lm.fit("cat", progress=False)


def test_generation_never_emits_special_tokens():
    lm = rk.LanguageModel.from_text(TEXT, hidden_size=8, embedding_dim=8, seed=0)  # untrained: anything goes
    with torch.no_grad():
        lm.network.output.bias[1] = 100.0  # make <unk> overwhelmingly likely
    text = lm.generate("the", length=50, seed=0)
    assert "<unk>" not in text and len(text) == 53


def test_validation_perplexity_is_logged_per_epoch_and_plotted(tmp_path):
    from rnnkit.plots import plot_perplexity
    from rnnkit.training.logs import read_training_log

    lm = rk.LanguageModel.from_text(TEXT, hidden_size=16, embedding_dim=8, seed=0)
    lm.fit(TEXT, epochs=3, batch_size=4, bptt=20, validation_text=TEXT[:200], progress=False, log_dir=tmp_path)
    curves = read_training_log(tmp_path)
    assert [e for e, _ in curves["val_loss"]] == [0, 1, 2] and [e for e, _ in curves["train_loss"]] == [0, 1, 2]
    assert math.exp(curves["val_loss"][-1][1]) == pytest.approx(lm.perplexity(TEXT[:200]), rel=1e-4)
    plot_perplexity(curves, path=tmp_path / "ppl.png")
    assert (tmp_path / "ppl.png").read_bytes()[:4] == b"\x89PNG"


def test_construction_is_seeded_without_resetting_the_callers_random_stream():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = rk.LanguageModel.from_text(TEXT, hidden_size=8, embedding_dim=8, seed=7)
    assert torch.equal(torch.rand(3), expected)  # the caller's stream went on as if nothing happened
    b = rk.LanguageModel.from_text(TEXT, hidden_size=8, embedding_dim=8, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.network.parameters(), b.network.parameters()))
