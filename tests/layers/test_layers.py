"""Layer behaviour that torch.nn cannot check: dropout between layers, options reaching every cell."""

import contextlib

import pytest
import torch

import rnnkit as rk
from tests.helpers import assert_close


def test_interlayer_dropout_masks_are_the_same_for_every_backend():
    native = rk.GRU(3, 4, 3, dropout=0.5, backend="native").double()
    reference = rk.GRU(3, 4, 3, dropout=0.5, backend="reference").double()
    reference.load_state_dict(native.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.manual_seed(7)
    out_n, _ = native(x)
    torch.manual_seed(7)
    out_r, _ = reference(x)
    assert_close(out_n, out_r)
    torch.manual_seed(8)
    assert not torch.allclose(native(x)[0], out_n)  # dropout is really on while training
    native.eval()
    assert torch.equal(native(x)[0], native(x)[0])


def _regime(monkeypatch, regime):
    """Make the dispatch see the compiled loops' products as on an AVX2 CPU ("mkl": ATen/MKL and the 256-bit panel
    kernel), an AVX-512 CPU with the panel kernel off ("onednn") or on ("wide": 512-bit panels)."""
    from rnnkit.engine import dispatch

    dispatch.fused_compiled.ops()  # loaded (if it can be) before the patches: loading reads the CPU's kind
    onednn = None if regime == "mkl" else 1 << 21
    monkeypatch.setattr(dispatch.fused_compiled, "onednn_min_macs", lambda: onednn)
    monkeypatch.setattr(dispatch.fused_compiled, "cpu_runs_avx512", lambda: regime != "mkl")
    panels = {"mkl": (3, 64, 256, 256 << 10, 2), "onednn": None, "wide": (3, 512, 512, 256 << 10, 1)}[regime]
    monkeypatch.setattr(dispatch.fused_compiled, "panel_limits", lambda: panels)
    return dispatch


@pytest.mark.parametrize(("regime", "steps", "batch", "hidden", "expected"), [
    ("mkl", 30, 32, 512, True), ("mkl", 29, 32, 512, False), ("mkl", 30, 31, 512, False), ("mkl", 50, 1, 128, True),
    ("mkl", 49, 1, 128, False), ("mkl", 50, 31, 129, False), ("mkl", 50, 2, 512, True), ("mkl", 50, 3, 512, False),
    ("mkl", 200, 8, 512, True), ("mkl", 200, 7, 512, False), ("mkl", 199, 8, 512, False), ("onednn", 100, 48, 125, True), ("onednn", 100, 48, 124, False),
    ("onednn", 1000, 16, 64, True), ("onednn", 100, 32, 128, False), ("onednn", 10000, 15, 64, False),
    ("wide", 10000, 8, 64, True), ("wide", 10000, 7, 128, False), ("wide", 100, 48, 125, True),
    ("wide", 200, 1, 96, True), ("wide", 200, 7, 96, True), ("wide", 199, 7, 96, False), ("wide", 200, 7, 97, False),
    ("wide", 50, 32, 128, True), ("wide", 49, 32, 128, False), ("wide", 100, 32, 129, False),
    ("wide", 50, 8, 64, True), ("wide", 99, 48, 129, True), ("wide", 49, 48, 124, False)])
def test_lstm_training_moves_to_the_fused_engine_at_the_measured_shapes(monkeypatch, regime, steps, batch, hidden,
                                                                        expected):
    """Where the compiled loops' products go through MKL or the 256-bit panel kernel (AVX2 CPUs): from batch 32
    at 30 steps, at any batch from 50 steps with hidden sizes up to 128 (or batches up to 2), from batch 8 at 200
    steps; where they go through oneDNN (AVX-512, panel kernel off): from 600k steps x batch x
    hidden, batch 16; through the 512-bit panel kernel (AVX-512): the same work from batch 8, or from 50 steps at
    hidden sizes up to 128, and batches under 8 from 200 steps at hidden sizes up to 96."""
    dispatch = _regime(monkeypatch, regime)
    assert dispatch.lstm_trains_fused(steps, batch, hidden) is expected
    if regime != "wide":  # RNNKIT_ONEDNN forced the other route: no LSTM measurement covers it
        monkeypatch.setattr(dispatch.fused_compiled, "cpu_runs_avx512", lambda: regime == "mkl")
        assert not dispatch.lstm_trains_fused(steps, batch, hidden)


@pytest.mark.parametrize(("regime", "steps", "batch", "hidden", "expected"), [
    ("mkl", 30, 32, 256, True), ("mkl", 30, 4096, 64, True), ("mkl", 29, 32, 64, False), ("mkl", 30, 31, 64, False),
    ("mkl", 30, 32, 257, False), ("mkl", 100, 8, 128, True), ("mkl", 99, 8, 128, False), ("mkl", 100, 7, 128, False),
    ("mkl", 100, 8, 129, False), ("mkl", 1000, 1, 64, False), ("onednn", 5, 32, 64, False),
    ("onednn", 5, 4096, 64, False), ("wide", 5, 8, 128, True), ("wide", 5, 16, 64, True), ("wide", 5, 7, 128, False),
    ("wide", 5, 17, 128, False), ("wide", 5, 16, 129, False), ("wide", 100, 256, 118, True),
    ("wide", 100, 256, 117, False), ("wide", 1000, 7, 1024, False), ("wide", 1, 1, 1024, True),
    ("wide", 16, 2, 512, True), ("wide", 17, 2, 128, False), ("wide", 16, 3, 128, False), ("mkl", 1, 1, 128, False),
    ("onednn", 1, 1, 128, False), ("wide", 1, 16, 256, True), ("wide", 1, 17, 256, False), ("wide", 2, 3, 256, False),
    ("mkl", 1, 16, 256, False), ("wide", 1000, 7, 96, True), ("wide", 2, 3, 96, True), ("wide", 17, 2, 97, False),
    ("mkl", 1000, 7, 96, False), ("onednn", 1000, 7, 96, False)])
def test_lstm_inference_moves_to_the_fused_engine_only_where_measured_faster(monkeypatch, regime, steps, batch,
                                                                              hidden, expected):
    """Where the compiled loops' products go through MKL or the 256-bit panel kernel (AVX2 CPUs): from batch 32 at
    30 steps with hidden sizes up to 256, from batch 8 at 100 steps with hidden sizes up to 128; through oneDNN (AVX-512, panel kernel off): never (oneDNN's LSTM was
    faster there); through the 512-bit panel kernel: from batch 8, at 3M steps x batch x hidden or more, or at
    batches up to 16 with hidden sizes up to 128, batches up to 2 of up to 16 steps (a generation loop's
    calls) and single steps of batches up to 16 (a batched decoder's) at any hidden size, and batches under 8 at
    hidden sizes up to 96."""
    dispatch = _regime(monkeypatch, regime)
    assert dispatch.lstm_infers_fused(steps, batch, hidden) is expected
    if dispatch.fused_compiled.ops() is not None:
        with torch.no_grad():
            chosen = dispatch.choose_backend(rk.LSTM(3, hidden).cells, [None], torch.randn(steps, batch, 3))
        assert chosen == ("fused" if expected else "native")
        with torch.no_grad():  # float64, which oneDNN's LSTM does not take: fused from 4 steps on every CPU
            chosen = dispatch.choose_backend(rk.LSTM(3, hidden).double().cells, [None],
                                             torch.randn(steps, batch, 3, dtype=torch.float64))
        assert chosen == ("fused" if steps >= 4 else "native")


@pytest.mark.parametrize(("steps", "batch", "hidden", "expected"), [
    (30, 1, 96, True), (30, 7, 32, True), (29, 7, 96, False), (300, 7, 97, False), (29, 8, 64, True),
    (16, 2, 64, True), (1, 16, 256, True)])
def test_small_lstm_batches_infer_fused_in_two_directions_from_30_steps(monkeypatch, steps, batch, hidden, expected):
    """Batches under 8 (hidden sizes up to 96) on AVX-512 CPUs: one direction fused at any length, two from 30 steps
    (below that a bidirectional layer's two fused calls tie with oneDNN's one primitive); the rules for batches of
    8 and more, and for the shortest calls, do not look at the directions."""
    dispatch = _regime(monkeypatch, "wide")
    assert dispatch.lstm_infers_fused(steps, batch, hidden, directions=2) is expected
    assert dispatch.lstm_infers_fused(steps, batch, hidden, directions=1) is (expected or hidden <= 96)
    if dispatch.fused_compiled.ops() is not None:
        layer = rk.LSTM(3, hidden, bidirectional=True)
        with torch.no_grad():
            chosen = dispatch.choose_backend(layer.cells, [None, None], torch.randn(steps, batch, 3))
        assert chosen == ("fused" if expected else "native")


@pytest.mark.parametrize(("steps", "batch", "hidden", "expected"), [
    (1, 1, 256, "native"), (1, 64, 32, "native"), (1, 64, 256, "native"), (1, 65, 32, "fused"), (1, 1, 257, "fused"),
    (2, 1, 64, "fused")])
def test_gru_inference_of_a_single_step_runs_natively_at_small_sizes(steps, batch, hidden, expected):
    """Up to 64 rows at hidden sizes up to 256, torch.nn's kernel costs less a call than the fused engine (fused over
    native 1.09-1.52 there); from two steps, larger batches or sizes, the compiled loops (where they are in use)."""
    from rnnkit.engine import dispatch
    from rnnkit.engine.fused import compiled

    layer = rk.GRU(3, hidden)
    with torch.no_grad():
        chosen = dispatch.choose_backend(layer.cells, [None], torch.randn(steps, batch, 3))
    assert chosen == (expected if compiled.ops() is not None else "native")


@pytest.mark.parametrize("options", [{"cell": "lstm", "layer_norm": True}, {"cell": "gru", "reset_after": False},
                                     {"cell": "rnn", "zoneout": 0.1}, {"cell": "rnn", "layer_norm": True},
                                     {"cell": "lstm", "peepholes": True},
                                     {"cell": "gru", "recurrent_dropout": 0.2, "bidirectional": True}])
def test_a_single_training_step_of_what_torch_nn_lacks_runs_the_reference_loop(options):
    """One step in training, batch x hidden up to 16384, on CPU: the reference loop's few autograd ops cost less
    than the fused call (1.05-1.78x its time); from two steps, past that width or under autocast (where the two would
    compute in different dtypes): the fused engine; without grad too, but for an Elman RNN with zoneout (reference
    0.73-0.90x the fused call's time at T=1; with layer norm alone the fused call is ahead, 0.94-1.26). Either way the
    same values as the fused engine."""
    from rnnkit.engine.dispatch import SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH, choose_backend

    torch.manual_seed(0)
    layer = rk.RNN(3, 64, **options).double()
    noises = [cell.sample_noise(1, 2) for cell in layer.cells]
    one = torch.randn(1, 256, 3, dtype=torch.float64)  # [T, B, I]: 256 x 64 = 16384
    wider = torch.randn(1, 257, 3, dtype=torch.float64)
    assert choose_backend(layer.cells, noises, one) == "reference"
    assert choose_backend(layer.cells, noises, wider) == "fused"
    assert choose_backend(layer.cells, noises, torch.randn(2, 4, 3, dtype=torch.float64)) == "fused"
    with torch.no_grad():
        elman_zoneout = options["cell"] == "rnn" and "zoneout" in options
        assert choose_backend(layer.cells, noises, one) == ("reference" if elman_zoneout else "fused")
        assert choose_backend(layer.cells, noises, wider) == "fused"
        assert choose_backend(layer.cells, noises, torch.randn(2, 4, 3, dtype=torch.float64)) == "fused"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choose_backend(layer.cells, noises, one) == "fused"
        with torch.no_grad():
            assert choose_backend(layer.cells, noises, one) == "fused"
    assert 256 * 64 == SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH
    # what auto computes for one step in training (the same noise drawn: same seed) equals the fused engine's
    fused = rk.RNN(3, 64, backend="fused", **options).double()
    fused.load_state_dict(layer.state_dict())
    x = torch.randn(4, 1, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for model in (layer, fused):
        torch.manual_seed(1)
        outputs, final = model(x)
        finals = final if isinstance(final, tuple) else (final,)
        (outputs.sin().sum() + sum(f.cos().sum() for f in finals)).backward()
        results.append([outputs, *finals, x.grad.clone(), *(p.grad for p in model.parameters())])
        x.grad = None
    for auto_value, fused_value in zip(*results, strict=True):
        assert_close(auto_value, fused_value, dtype=torch.float64)
    layer.eval()  # and one step of inference (a generation loop's call), with a state to start from
    fused.eval()
    state = torch.randn(layer.num_directions, 4, 64, dtype=torch.float64)
    state = (state, state.flip(0)) if options["cell"] == "lstm" else state
    with torch.inference_mode():
        for auto_value, fused_value in zip(_flat(layer(x, state=state)), _flat(fused(x, state=state)), strict=True):
            assert_close(auto_value, fused_value, dtype=torch.float64)


def _flat(result):
    outputs, final = result
    return [outputs, *(final if isinstance(final, tuple) else (final,))]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_single_lstm_training_step_runs_the_reference_loop_and_matches_torch_nn(bidirectional):
    """A plain float32 LSTM's single training step on CPU: the reference loop (0.39-1.02x oneDNN's LSTM's time), at
    any width; from two steps, without grad, in float64 or under autocast: the other rules. Values and gradients as
    torch.nn's nn.LSTM with the same weights."""
    from rnnkit.engine.dispatch import choose_backend

    torch.manual_seed(0)
    reference = torch.nn.LSTM(3, 32, batch_first=True, bidirectional=bidirectional)
    layer = rk.LSTM.from_torch(reference)
    noises = [None] * len(layer.cells)
    assert choose_backend(layer.cells, noises, torch.randn(1, 4096, 3)) == "reference"
    assert choose_backend(layer.cells, noises, torch.randn(2, 4, 3)) == "native"
    assert choose_backend(layer.cells, noises, torch.randn(1, 4, 3).double()) == "native"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choose_backend(layer.cells, noises, torch.randn(1, 4, 3)) == "native"
    with torch.no_grad():
        assert choose_backend(layer.cells, noises, torch.randn(1, 32, 3)) == "native"
    x = torch.randn(5, 1, 3, requires_grad=True)
    h0, c0 = torch.randn(2, len(layer.cells), 5, 32).unbind(0)
    results = []
    for model, kwargs in ((layer, {"state": (h0, c0)}), (reference, {})):
        outputs, (h, c) = model(x, **kwargs) if kwargs else model(x, (h0, c0))
        (outputs.sin().sum() + h.cos().sum() + (c * c).sum()).backward()
        results.append([outputs, h, c, x.grad.clone(), *(p.grad for p in model.parameters())])
        x.grad = None
    for ours, theirs in zip(*results, strict=True):
        assert_close(ours, theirs, dtype=torch.float32)


@pytest.mark.parametrize(("steps", "batch", "hidden", "expected"), [
    (100, 64, 256, True), (100, 8, 512, True), (100, 65, 256, False), (99, 32, 128, False), (100, 32, 128, True),
    (100, 8, 513, False)])
def test_bidirectional_lstm_inference_runs_fused_where_its_two_loops_run_at_once(monkeypatch, steps, batch, hidden,
                                                                                 expected):
    """On AVX-512 CPUs, a bidirectional layer's inference from batch 8 at 100 steps where the fused engine runs its
    two loops at once (batch x hidden up to 16k, hidden up to 512; two threads, as measured): 0.61-0.98x oneDNN's
    time."""
    from rnnkit.engine import fused

    dispatch = _regime(monkeypatch, "wide")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pairs = dispatch.fused_compiled.pairs_directions()
        assert fused.pairs_at(steps, batch, hidden) is (pairs and batch * hidden <= 16384 and hidden <= 512)
        assert dispatch.lstm_infers_fused(steps, batch, hidden, directions=2) is (expected and pairs)
        one_direction = dispatch.lstm_infers_fused(steps, batch, hidden, directions=1)
        # (one direction: the rules of batches of 8 and more)
        assert not one_direction or steps * batch * hidden >= 3_000_000 or (batch <= 16 and hidden <= 128)
        with dispatch.fused_compiled.paired_directions(False) if pairs else contextlib.nullcontext():
            assert (not dispatch.lstm_infers_fused(steps, batch, hidden, directions=2)
                    or steps * batch * hidden >= 3_000_000)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("steps", "batch", "hidden", "expected"), [
    (1, 1, 128, True), (3, 16, 128, True), (1, 64, 768, True), (2, 1, 384, True), (3, 21, 256, True),
    (4, 16, 192, True), (5, 1, 4, False), (4, 17, 4, False), (3, 22, 4, False), (4, 1, 193, False), (3, 1, 257, False),
    (1, 65, 4, False), (1, 1, 769, False)])
def test_elman_inference_of_short_sequences_runs_natively(steps, batch, hidden, expected):
    """Up to 4 steps, 64 rows (steps x batch) and steps x hidden size 768, the fused call's fixed cost outweighs
    its faster steps: torch.nn's kernel then (a generation loop calls its layer once a token)."""
    from rnnkit.engine import dispatch
    from rnnkit.engine.fused import compiled

    assert dispatch.elman_infers_native(steps, batch, hidden) is expected
    layer = rk.SimpleRNN(3, hidden, nonlinearity="relu")
    x = torch.randn(steps, batch, 3)
    with torch.no_grad():
        chosen = dispatch.choose_backend(layer.cells, [None], x)
    assert chosen == ("native" if expected or compiled.ops() is None else "fused")
    # training: fused from 4 steps (SHORT_TRAINING_NATIVE_MAX_STEPS)
    assert dispatch.choose_backend(layer.cells, [None], x) == ("native" if steps <= 3 else "fused")
    layer.cells[0].zoneout = 0.1  # what torch.nn lacks: fused, but a single step up to 16k (the reference loop)
    with torch.no_grad():
        single = steps == 1 and batch * hidden <= dispatch.SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH
        assert dispatch.choose_backend(layer.cells, [None], x) == ("reference" if single else "fused")


@pytest.mark.parametrize(("steps", "training", "expected"), [
    (5, True, True), (4, True, False), (100, True, True), (8, False, True), (7, False, False), (30, False, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_lstm_batches_run_fused_where_torch_nn_would_loop_over_packed_steps(steps, training, expected, dtype):
    """A padded batch goes through ATen's step-by-step packed LSTM in torch.nn (oneDNN takes equal lengths only):
    fused from 5 steps in training, 8 in inference, at any batch and size, in float32 and float64; the same shape
    unpadded keeps the shape rules (a small batch: oneDNN's LSTM); on a GPU, cuDNN takes packed batches."""
    from rnnkit.engine import dispatch
    from rnnkit.engine.fused import compiled

    assert dispatch.lstm_padded_runs_fused(steps, training) is expected
    layer = rk.LSTM(3, 8, bidirectional=True).to(dtype)
    x = torch.randn(steps, 2, 3, dtype=dtype)
    padded, full = torch.tensor([steps, steps - 1]), torch.tensor([steps, steps])
    with torch.set_grad_enabled(training):
        chosen = dispatch.choose_backend(layer.cells, [None, None], x, padded)
        unpadded = dispatch.choose_backend(layer.cells, [None, None], x, full)
        assert unpadded == dispatch.choose_backend(layer.cells, [None, None], x)  # equal lengths: the shape rules
        if dtype == torch.float64:  # no oneDNN LSTM: fused from 4 steps (LSTM_FLOAT64_MIN_STEPS)
            assert unpadded == ("fused" if compiled.ops() is not None and steps >= 4 else "native")
        elif training:  # a batch of 2: oneDNN's LSTM (a wide CPU infers short sequences of 1-2 rows fused)
            assert unpadded == "native"
        assert dispatch.choose_backend(layer.to("meta").cells, [None, None], x.to("meta"), padded) == "native"
        with compiled.python_loops():  # the Python loops: training from 8 steps
            python = dispatch.choose_backend(layer.cells, [None, None], x, padded)
    assert dispatch.lstm_padded_runs_fused(steps, training, compiled=False) is (training and steps >= 8)
    assert python == ("fused" if training and steps >= 8 else "native")
    assert chosen == ("fused" if expected and compiled.ops() is not None else python)


def test_padded_lstm_batch_through_auto_matches_torch_nn_on_packed_sequences():
    """What auto now runs for a padded LSTM batch (the fused engine) against torch.nn's packed LSTM with the same
    weights: outputs on every real step, zeros on padding, final states and every gradient."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True).double()
    layer = rk.RNN.from_torch(reference)
    x = torch.randn(4, 12, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([12, 9, 5, 12])
    from rnnkit.engine import dispatch  # (the Python loops too train a padded batch of 8 steps or more fused)
    assert dispatch.choose_backend(layer.cells[:2], [None, None], x.transpose(0, 1), lengths) == "fused"
    out, (h, c) = layer(x, lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, (h_ref, c_ref) = reference(packed)
    expected = torch.nn.utils.rnn.pad_packed_sequence(expected, batch_first=True, total_length=12)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-10)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum() + h.sum() + c.sum(), [x, *layer.parameters()])
    grads_ref = torch.autograd.grad((expected * weights).sum() + h_ref.sum() + c_ref.sum(),
                                    [x, *reference.parameters()])
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_cell_options_reach_every_cell_and_layer_sizes_chain():
    layer = rk.LSTM(3, 4, 3, bidirectional=True, layer_norm=True, peepholes=True, zoneout=0.1)
    assert len(layer.cells) == 6
    assert all(c.layer_norm and c.peepholes and c.zoneout == 0.1 for c in layer.cells)
    assert [c.input_size for c in layer.cells] == [3, 3, 8, 8, 8, 8]
    assert layer.cell(2, 1) is layer.cells[5]


def test_auto_backend_picks_native_where_exact_and_fastest_else_fused():
    from rnnkit.engine import choose_backend

    x = torch.randn(2, 3, 3)
    assert choose_backend(rk.GRU(3, 4).cells, [None], x) == "fused"  # training GRU: fused from 2 steps
    assert choose_backend(rk.GRU(3, 4).cells, [None], x[:1]) == "native"  # one step: torch.nn's (fixed cost)
    assert choose_backend(rk.SimpleRNN(3, 4).cells, [None], torch.randn(4, 3, 3)) == "fused"  # from 4 steps
    assert choose_backend(rk.SimpleRNN(3, 4).cells, [None], x) == "native"
    assert choose_backend(rk.SimpleRNN(3, 4, zoneout=0.1).cells, [None], x) == "fused"  # what torch.nn lacks
    assert choose_backend(rk.LSTM(3, 4).cells, [None], x) == "native"  # oneDNN's LSTM for small batches
    from rnnkit.engine import dispatch
    from rnnkit.engine.fused import compiled

    big = torch.randn(2, 16, 3)  # [T, B, I]
    while dispatch._lstm_regime() is not None and not dispatch.lstm_trains_fused(*big.shape[:2], 4):
        big = torch.cat([big, big])
    # a short sequence of a small batch: oneDNN's LSTM under every regime
    assert choose_backend(rk.LSTM(3, 4).cells, [None], big[:2, :7]) == "native"
    # the compiled loops' LSTM for large ones (torch.nn's where RNNKIT_ONEDNN forced an unmeasured route)
    expected = "fused" if compiled.ops() is not None else "native"
    measured = expected if dispatch._lstm_regime() is not None else "native"
    assert choose_backend(rk.LSTM(3, 4).cells, [None], big) == measured
    assert choose_backend(rk.LSTM(3, 4).cells, [None], big.double()) == expected  # no oneDNN LSTM in float64
    assert choose_backend(rk.LSTM(3, 4).cells, [None], big[:3].double()) == "native"  # but under 4 steps
    with compiled.python_loops():
        assert choose_backend(rk.LSTM(3, 4).cells, [None], big) == "native"
    with torch.no_grad():  # inference: see test_lstm_inference_moves_to_the_fused_engine_only_where_measured_faster
        # under every regime's batch (at hidden sizes over 96: batches under 8 run fused on AVX-512 CPUs below them)
        assert choose_backend(rk.LSTM(3, 128).cells, [None], big[:, :4]) == "native"
    with torch.no_grad():  # GRU/SimpleRNN inference: the compiled loops beat torch.nn's per-step loop
        assert choose_backend(rk.GRU(3, 4).cells, [None], x) == expected
        longer = torch.randn(5, 3, 3, dtype=torch.float64)  # (the Elman RNN's shortest ones: native, see below)
        assert choose_backend(rk.SimpleRNN(3, 4).cells, [None], longer) == expected
        with compiled.python_loops():
            assert choose_backend(rk.GRU(3, 4).cells, [None], x) == "native"
    assert choose_backend(rk.GRU(3, 4, layer_norm=True).cells, [None], x) == "fused"
    assert choose_backend(rk.LSTM(3, 4, peepholes=True).cells, [None], x) == "fused"
    dropout = rk.LSTM(3, 4, recurrent_dropout=0.3)
    assert choose_backend(dropout.cells, [dropout.cells[0].sample_noise(2, 2)], x) == "fused"
    dropout.eval()
    assert choose_backend(dropout.cells, [dropout.cells[0].sample_noise(2, 2)], x) == "native"

    class MyCell(rk.GRUCell):
        pass

    assert choose_backend(rk.RNN(3, 4, cell=MyCell, layer_norm=True).cells, [None], x) == "reference"


@pytest.mark.parametrize("base", [rk.LSTMCell, rk.GRUCell, rk.SimpleRNNCell])
def test_a_subclassed_cell_never_runs_on_torch_nn_kernels(base):
    """A user's subclass may change the step; torch.nn's kernels would ignore that. ``auto`` takes the reference
    loop for it (training, inference, with or without the compiled loops), ``backend="native"`` refuses it, and
    the subclass's own step is what runs."""
    from rnnkit.engine import choose_backend
    from rnnkit.engine.fused import compiled

    class Halved(base):
        def forward(self, x, state, noise=None):  # the step, scaled: no torch.nn kernel computes this
            output, new = super().forward(x, state, noise)
            return output * 0.5, tuple(s * 0.5 for s in new)

    layer = rk.RNN(3, 4, cell=Halved)
    x = torch.randn(2, 5, 3)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert choose_backend(layer.cells, [None], x.transpose(0, 1)) == "reference"
            with compiled.python_loops():
                assert choose_backend(layer.cells, [None], x.transpose(0, 1)) == "reference"
    plain = rk.RNN(3, 4, cell=base, backend="reference")
    plain.load_state_dict(layer.state_dict())
    assert not torch.allclose(layer(x)[0], plain(x)[0])  # the override ran
    with pytest.raises(ValueError, match="backend='native' cannot run custom cell Halved"):
        rk.RNN(3, 4, cell=Halved, backend="native")(x)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_parametrized_cell_runs_with_its_computed_weights(cell):
    """``torch.nn.utils.parametrizations.weight_norm`` moves a weight out of the cell's parameter dict (which the
    layer reads directly on its hot path) and makes the cell a subclass: ``auto`` runs the reference loop on the
    weights it computes, in training and inference, and the gradients reach the parametrization's parameters."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    layer = rk.RNN(3, 4, cell=cell).double()
    plain = rk.RNN(3, 4, cell=cell, backend="reference").double()
    weight_norm(layer.cells[0], "weight_ih")
    weight_norm(layer.cells[0], "weight_hh")
    with torch.no_grad():  # a gain other than the norm: the computed weights differ from the stored direction
        layer.cells[0].parametrizations.weight_ih.original0.mul_(1.5)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):  # the weights the parametrization computes
            getattr(plain.cells[0], name).copy_(getattr(layer.cells[0], name))
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    out, _ = layer(x)
    expected, _ = plain(x)
    assert_close(out, expected)
    with torch.no_grad():
        assert_close(layer(x)[0], expected)
    gain = layer.cells[0].parametrizations.weight_ih.original0
    grad_x, grad_gain = torch.autograd.grad(out.sum(), [x, gain])
    assert_close(grad_x, torch.autograd.grad(expected.sum(), x)[0])
    assert grad_gain.abs().sum() > 0


@pytest.mark.parametrize("backend", ["native", "fused", "reference"])
def test_run_layer_takes_and_gives_each_directions_state_apart(backend):
    """rnnkit.engine.run_layer (states as one tuple per direction) gives what the layer does (states [D, B, H])."""
    from rnnkit.engine import run_layer

    torch.manual_seed(0)
    layer = rk.LSTM(3, 4, bidirectional=True, batch_first=False, backend=backend).double()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
    expected, (h_n, c_n) = layer(x, lengths=torch.tensor([6, 4]), state=(h0, c0))
    outputs, finals = run_layer(tuple(layer.cells), x, [(h0[0], c0[0]), (h0[1], c0[1])], torch.tensor([6, 4]),
                                [None, None], backend)
    torch.testing.assert_close(outputs, expected, rtol=0, atol=0)
    for d in range(2):
        torch.testing.assert_close(finals[d][0], h_n[d], rtol=0, atol=0)
        torch.testing.assert_close(finals[d][1], c_n[d], rtol=0, atol=0)
