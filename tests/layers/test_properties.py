"""Property tests over random sizes, lengths and options."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnkit as rk
from tests.helpers import assert_close, randomise

CELL_CHOICES = st.sampled_from([
    ("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("gru", {}), ("gru", {"reset_after": False}),
    ("lstm", {}), ("lstm", {"peepholes": True}),
])


@st.composite
def configurations(draw):
    cell, options = draw(CELL_CHOICES)
    options = dict(options)
    if draw(st.booleans()):
        options["layer_norm"] = True
    batch = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 6))
    return {
        "cell": cell, "options": options,
        "input_size": draw(st.integers(1, 4)), "hidden_size": draw(st.integers(1, 4)),
        "num_layers": draw(st.integers(1, 2)), "bidirectional": draw(st.booleans()),
        "lengths": draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch)),
        "steps": steps, "seed": draw(st.integers(0, 2**16)),
    }


def build(config):
    torch.manual_seed(config["seed"])
    layer = rk.RNN(config["input_size"], config["hidden_size"], config["num_layers"], cell=config["cell"],
                   bidirectional=config["bidirectional"], backend="reference", **config["options"]).double()
    return randomise(layer)


@settings(max_examples=40, deadline=None)
@given(configurations())
def test_batch_equals_each_sequence_alone(config):
    layer = build(config)
    lengths = config["lengths"]
    x = torch.randn(len(lengths), config["steps"], config["input_size"], dtype=torch.float64)
    out, final = layer(x, lengths=lengths)
    finals = final if isinstance(final, tuple) else (final,)
    for b, n in enumerate(lengths):
        out_b, final_b = layer(x[b:b + 1, :n])
        assert_close(out[b:b + 1, :n], out_b)
        assert torch.count_nonzero(out[b, n:]) == 0
        for f, fb in zip(finals, final_b if isinstance(final_b, tuple) else (final_b,)):
            assert_close(f[:, b:b + 1], fb)


@settings(max_examples=25, deadline=None)
@given(configurations())
def test_native_equals_reference_where_supported(config):
    config["options"].pop("layer_norm", None)
    if config["options"].get("peepholes") or config["options"].get("reset_after") is False:
        config["options"] = {k: v for k, v in config["options"].items() if k == "nonlinearity"}
    reference = build(config)
    native = rk.RNN(config["input_size"], config["hidden_size"], config["num_layers"], cell=config["cell"],
                    bidirectional=config["bidirectional"], backend="native", **config["options"]).double()
    native.load_state_dict(reference.state_dict())
    x = torch.randn(len(config["lengths"]), config["steps"], config["input_size"], dtype=torch.float64)
    out_r, final_r = reference(x, lengths=config["lengths"])
    out_n, final_n = native(x, lengths=config["lengths"])
    assert_close(out_n, out_r)
    for a, b in zip(final_n if isinstance(final_n, tuple) else (final_n,),
                    final_r if isinstance(final_r, tuple) else (final_r,)):
        assert_close(a, b)


@settings(max_examples=30, deadline=None)
@given(configurations(), st.booleans())
def test_fused_equals_reference_with_noise(config, noisy):
    if noisy:
        config["options"].update(recurrent_dropout=0.3, zoneout=0.2)
    reference = build(config)
    fused = rk.RNN(config["input_size"], config["hidden_size"], config["num_layers"], cell=config["cell"],
                   bidirectional=config["bidirectional"], backend="fused", **config["options"]).double()
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(len(config["lengths"]), config["steps"], config["input_size"], dtype=torch.float64)
    results = []
    for layer in (reference, fused):
        torch.manual_seed(config["seed"])  # same masks for both
        out, final = layer(x, lengths=config["lengths"])
        finals = final if isinstance(final, tuple) else (final,)
        loss = out.pow(2).sum() + sum(f.sum() for f in finals)
        results.append([out, *finals, *torch.autograd.grad(loss, list(layer.parameters()))])
    for a, b in zip(*results):
        assert_close(b, a)
