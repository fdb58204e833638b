"""Property tests over random sizes, lengths and options."""

import contextlib
import copy
import math
from unittest import mock

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import rnnkit as rk
from rnnkit.cells import simple as simple_cell
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
        "steps": steps, "seed": draw(st.integers(0, 2**16)), "with_state": draw(st.booleans()),
    }


def initial_state(config, layer, requires_grad=False):
    """A random initial state ``[L*D, B, H]`` (a pair for an LSTM) when the configuration has one, else None."""
    if not config["with_state"]:
        return None
    shape = (layer.num_layers * layer.num_directions, len(config["lengths"]), layer.hidden_size)
    parts = tuple(torch.randn(shape, dtype=torch.float64).requires_grad_(requires_grad)
                  for _ in range(layer.state_size))
    return parts if len(parts) == 2 else parts[0]


def state_parts(state):
    return () if state is None else state if isinstance(state, tuple) else (state,)


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
    state = initial_state(config, reference)  # (torch.nn's kernels take it whole, the reference loop split by cell)
    out_r, final_r = reference(x, lengths=config["lengths"], state=state)
    out_n, final_n = native(x, lengths=config["lengths"], state=state)
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
    state = initial_state(config, reference, requires_grad=True)
    results = []
    for layer in (reference, fused):
        torch.manual_seed(config["seed"])  # same masks for both
        out, final = layer(x, lengths=config["lengths"], state=state)
        finals = final if isinstance(final, tuple) else (final,)
        loss = out.pow(2).sum() + sum(f.sum() for f in finals)
        results.append([out, *finals, *torch.autograd.grad(loss, [*layer.parameters(), *state_parts(state)])])
    for a, b in zip(*results):
        assert_close(b, a)


@st.composite
def float32_configurations(draw):
    """Sizes on both sides of the dispatch rules' and the compiled loops' thresholds (batch split, panel products,
    single steps, small batches, paired directions), which the tiny float64 sizes above never reach."""
    cell, options = draw(st.sampled_from([
        ("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("rnn", {"layer_norm": True}), ("gru", {}),
        ("gru", {"reset_after": False}), ("gru", {"layer_norm": True}), ("lstm", {}), ("lstm", {"peepholes": True}),
        ("lstm", {"layer_norm": True}), ("lstm", {"bias": False})]))
    batch = draw(st.sampled_from([1, 2, 3, 5, 8, 9, 16, 33]))
    steps = draw(st.sampled_from([1, 2, 3, 10, 30, 31, 100, 101]))
    padded = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch)) if padded else None
    if lengths:
        lengths[0] = steps
    return {"cell": cell, "options": options, "batch": batch, "steps": steps, "lengths": lengths,
            "hidden_size": draw(st.sampled_from([16, 64, 96, 97, 128, 160])),
            "input_size": draw(st.sampled_from([1, 8, 32])), "num_layers": draw(st.integers(1, 2)),
            "bidirectional": draw(st.booleans()), "batch_first": draw(st.booleans()),
            "train": draw(st.booleans()), "initial_state": draw(st.booleans()), "threads": draw(st.sampled_from([1, 2])),
            "backend": draw(st.sampled_from(["auto", "fused"])), "seed": draw(st.integers(0, 2**16))}


def _run_for_errors(layer, x, lengths, state, train):
    """outputs, final states and (training) the gradients of the input and every parameter."""
    with torch.set_grad_enabled(train):
        out, final = layer(x, lengths=lengths, state=state)
    finals = final if isinstance(final, tuple) else (final,)
    if not train:
        return [out, *finals]
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() + sum((f * f).sum() for f in finals)
    return [out, *finals, *torch.autograd.grad(loss, [x, *layer.parameters()])]


@contextlib.contextmanager
def _relu_margin():
    """Collect the smallest |pre-activation| each ReLU of the reference loop's Elman steps sees inside the block."""
    seen = [math.inf]

    def relu(pre):
        seen.append(pre.detach().abs().min().item())
        return torch.relu(pre)

    with mock.patch.dict(simple_cell.NONLINEARITIES, {"relu": relu}):
        yield seen


@settings(max_examples=30, deadline=None)
@given(float32_configurations())
def test_float32_fast_paths_are_as_accurate_as_the_reference_loop(config):
    """``auto`` and ``fused`` in float32 against a float64 truth (the reference loop), at realistic sizes, with the
    float32 reference loop as the yardstick: any wrong dispatch or kernel gives errors far above float32 rounding."""
    c = config
    torch.manual_seed(c["seed"])
    reference = rk.RNN(c["input_size"], c["hidden_size"], c["num_layers"], cell=c["cell"],
                       bidirectional=c["bidirectional"], batch_first=c["batch_first"], backend="reference",
                       **c["options"])
    randomise(reference, 0.7 / c["hidden_size"] ** 0.5)  # (stable dynamics: errors stay at rounding size)
    ours = rk.RNN(c["input_size"], c["hidden_size"], c["num_layers"], cell=c["cell"],
                  bidirectional=c["bidirectional"], batch_first=c["batch_first"], backend=c["backend"], **c["options"])
    ours.load_state_dict(reference.state_dict())
    truth_layer = copy.deepcopy(reference).double()
    shape = (c["batch"], c["steps"], c["input_size"])
    x = torch.randn(shape if c["batch_first"] else (shape[1], shape[0], shape[2]), requires_grad=c["train"])
    state = None
    if c["initial_state"]:
        h = torch.randn(c["num_layers"] * (2 if c["bidirectional"] else 1), c["batch"], c["hidden_size"]) * 0.5
        state = (h, torch.randn_like(h) * 0.5) if c["cell"] == "lstm" else h
    x64 = x.detach().double().requires_grad_(c["train"])
    state64 = None if state is None else (tuple(s.double() for s in state) if isinstance(state, tuple)
                                          else state.double())
    threads = torch.get_num_threads()
    torch.set_num_threads(c["threads"])
    try:
        with _relu_margin() as margin:
            truth = _run_for_errors(truth_layer, x64, c["lengths"], state64, c["train"])
        # a ReLU unit whose pre-activation is within float32 rounding of 0 may switch on in one float32 run and off in
        # the other: a gradient difference of order one that is no error of either (a sweep's seed had |pre| = 2e-8)
        assume(not c["train"] or min(margin) > 2e-6)
        yardstick = _run_for_errors(reference, x, c["lengths"], state, c["train"])
        results = _run_for_errors(ours, x, c["lengths"], state, c["train"])
    finally:
        torch.set_num_threads(threads)
    for k, (ours_k, ref_k, exact) in enumerate(zip(results, yardstick, truth)):
        error = (ours_k.double() - exact).abs().max().item()
        allowed = 3 * (ref_k.double() - exact).abs().max().item() + 1e-5 * max(1.0, exact.abs().max().item())
        assert error <= allowed, (k, error, allowed)
