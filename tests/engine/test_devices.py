"""The engines away from the CPU.

This machine has no GPU. What runs on one is the code path every non-CPU device takes: the fused engine's
Python loops and plain (unpooled) buffers, ``auto`` choosing torch.nn's kernels for what they compute, masks
drawn on the device, lengths planned on the CPU and the plan moved over. Here that path runs on PyTorch's
``meta`` device (shapes, dtypes and devices, no data) under :class:`OneDevice`, which rejects any operation
whose tensors sit on two devices, as CUDA's kernels do (the meta device alone lets e.g. ``index_select``
take a CPU index): every backend x cell option x lengths x direction x noise, forward and backward. The values
are the CPU's: the same torch operations, held to the reference by tests/engine/test_fused.py's Python-loops
runs. With a GPU, the tests at the end also compare CUDA runs with the CPU reference in float64.
"""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import rnnkit as rk
from rnnkit.engine.dispatch import choose_backend
from tests.helpers import CELL_OPTIONS, cuda, native_can_run, option_id, randomise

aten = torch.ops.aten
# operations made to move data between devices, and one that takes its lengths on the CPU on every device
MOVES = {aten._to_copy, aten.copy_, aten._copy_from, aten._copy_from_and_resize, aten._pack_padded_sequence}


class OneDevice(TorchDispatchMode):
    """Raise on any operation whose tensor arguments are on more than one device (a 0-dim CPU tensor is a
    scalar, which CUDA kernels take too), except those that copy between devices."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket not in MOVES:
            devices = {t.device for t in tree_leaves((args, kwargs))
                       if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                raise AssertionError(f"{func} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def test_one_device_mode_catches_what_meta_lets_through():
    values, index = torch.empty(5, 3, device="meta"), torch.tensor([0, 2])
    assert values.index_select(0, index).device.type == "meta"  # the meta device alone: no complaint
    with OneDevice(), pytest.raises(AssertionError, match="index_select.*mixes devices"):
        values.index_select(0, index)
    with OneDevice():  # a move, and a CPU scalar, are fine
        assert index.to("meta").device.type == "meta"
        assert (values * torch.tensor(2.0)).device.type == "meta"


NOISE = {"none": {}, "noise": {"recurrent_dropout": 0.2, "zoneout": 0.1}}
LENGTHS = {"full": None, "mixed": [5, 2, 4, 3]}  # T = 5, B = 4


def _runs(backends):
    """(backend, cell name, options, lengths) for every backend x cell option x noise x lengths it can run
    here: native only what torch.nn computes, and no lengths where torch.nn would run (its
    ``pad_packed_sequence`` reads the packed batch sizes' data, which meta tensors lack)."""
    runs = []
    for backend, (name, options), noise, (lengths_id, lengths) in itertools.product(
            backends, CELL_OPTIONS, NOISE, LENGTHS.items()):
        options = {**options, **NOISE[noise]}
        torch_runs = backend == "native" or (backend == "auto" and native_can_run(options))
        if (backend == "native" and not native_can_run(options)) or (lengths is not None and torch_runs):
            continue
        runs.append(pytest.param(backend, name, options, lengths,
                                 id=f"{backend}-{option_id((name, options))}-{lengths_id}"))
    return runs


@pytest.mark.parametrize("backend, name, options, lengths", _runs(["fused", "auto", "reference", "native"]))
def test_every_backend_trains_off_the_cpu(backend, name, options, lengths):
    """Two bidirectional layers (both directions, a layer's output as the next one's input, dropout between
    them), initial states given, in training mode (recurrent dropout and zoneout masks drawn)."""
    layer = rk.RNN(3, 4, cell=name, num_layers=2, bidirectional=True, dropout=0.3, backend=backend,
                   **options).to("meta")
    directions = 2
    x = torch.empty(4, 5, 3, device="meta", requires_grad=True)
    h0 = torch.empty(2 * directions, 4, 4, device="meta", requires_grad=True)
    state = (h0, torch.empty_like(h0, requires_grad=True)) if name == "lstm" else h0
    with OneDevice():
        out, final = layer(x, lengths=lengths, state=state)
        finals = final if name == "lstm" else (final,)
        loss = out.sum() + sum(f.sum() for f in finals)
        loss.backward()
    assert out.device.type == "meta" and out.shape == (4, 5, 4 * directions)
    assert all(f.device.type == "meta" and f.shape == h0.shape for f in finals)
    for what, tensor in [("x", x), ("h0", h0), *layer.named_parameters()]:
        assert tensor.grad is not None, f"no gradient for {what}"
        assert tensor.grad.device.type == "meta" and tensor.grad.shape == tensor.shape, what


@pytest.mark.parametrize("case", CELL_OPTIONS, ids=[option_id(c) for c in CELL_OPTIONS])
@pytest.mark.parametrize("backend", ["fused", "auto", "reference"])
def test_inference_off_the_cpu(backend, case):
    """Without a graph to record the fused engine keeps nothing for a backward; off the CPU, too."""
    name, options = case
    layer = rk.RNN(3, 4, cell=name, backend=backend, **options).to("meta").eval()
    with OneDevice(), torch.no_grad():
        out, _ = layer(torch.empty(4, 5, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 5, 4)


@pytest.mark.parametrize("attention", ["general", "additive", None])
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_seq2seq_trains_off_the_cpu(cell, attention):
    """The encoder-decoder's teacher-forced training step (embeddings, a 2-layer bidirectional encoder with
    lengths, attention masks, input feeding, the decoder's cells step by step) keeps every tensor on the
    model's device. The encoder runs fused: torch.nn's kernels with lengths need data the meta device lacks."""
    from rnnkit.seq2seq import Seq2SeqNetwork

    torch.manual_seed(0)
    model = Seq2SeqNetwork(12, 12, embedding_dim=8, hidden_size=6, attention=attention, cell=cell, encoder_layers=2)
    for module in model.modules():
        if isinstance(module, rk.RNN):
            module.backend = "fused"
    model.to("meta")
    source = torch.randint(4, 12, (3, 7)).to("meta")
    target_in = torch.randint(4, 12, (3, 5)).to("meta")
    with OneDevice():
        log_probs, _ = model(source, torch.tensor([7, 4, 2]), target_in)
        log_probs.sum().backward()
    assert log_probs.device.type == "meta" and log_probs.shape == (3, 5, 12)
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters() if p.requires_grad)


class Calls(TorchDispatchMode):
    """Records the name of every operation run under it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_tanh_takes_the_sigmoid_route_on_the_cpu_only():
    """2 sigmoid(2x) - 1 is faster than ATen's tanh on the CPU; on a GPU tanh is one kernel, the route four."""
    from rnnkit.engine.fused.common import TANH_VIA_SIGMOID_FROM, tanh_

    for device, expected in (("cpu", "sigmoid_"), ("meta", "tanh")):
        x = torch.zeros(TANH_VIA_SIGMOID_FROM, device=device)
        with Calls() as calls:
            tanh_(x)
        assert expected in calls.names and len(calls.names) == (4 if device == "cpu" else 1), (device, calls.names)


def test_auto_runs_torch_kernels_off_the_cpu():
    """On a GPU cuDNN runs the whole sequence in one kernel: ``auto`` takes it wherever it computes the
    options, the fused engine elsewhere."""
    x = torch.empty(100, 64, 3, device="meta", requires_grad=True)  # a shape the CPU would run fused
    for layer in (rk.LSTM(3, 128), rk.GRU(3, 128), rk.SimpleRNN(3, 128)):
        assert choose_backend(layer.to("meta").cells, [None], x) == "native"
        assert choose_backend(layer.cells, [None], torch.empty(100, 64, 3, requires_grad=True)) == "fused"
    assert choose_backend(rk.LSTM(3, 128, layer_norm=True).to("meta").cells, [None], x) == "fused"


# ------------------------------------------------------------------ on a GPU, when there is one


def _against_the_cpu_reference(backend, case, lengths, device):
    """float64 on ``device`` against the reference loop on the CPU: outputs, final states and every gradient,
    to the engine contract's 1e-10, both directions, two layers (zoneout on, in evaluation mode so that its
    masks are the same on both devices; not for native, which has none)."""
    name, options = case
    noisy = {} if backend == "native" else {"zoneout": 0.2}
    torch.manual_seed(0)
    cpu = randomise(rk.RNN(3, 4, cell=name, num_layers=2, bidirectional=True, backend="reference",
                           **options, **noisy).double().eval())
    other = rk.RNN(3, 4, cell=name, num_layers=2, bidirectional=True, backend=backend, **options, **noisy).double()
    other.load_state_dict(cpu.state_dict())
    other = other.to(device).eval()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    weights = torch.linspace(-1, 1, 4 * 5 * 8, dtype=torch.float64).view(4, 5, 8)  # the loss's, made on the CPU
    results = []
    for layer, where in ((cpu, "cpu"), (other, device)):
        x_leaf = x.to(where).requires_grad_()
        out, final = layer(x_leaf, lengths=lengths)
        finals = final if name == "lstm" else (final,)
        loss = (out * weights.to(where)).sum() + sum(f.sum() for f in finals)
        grads = torch.autograd.grad(loss, [x_leaf, *layer.parameters()])
        results.append([t.cpu() for t in (out, *finals, *grads)])
    names = ["outputs", *[f"final state {k}" for k in range(len(finals))], "x's gradient",
             *[f"{n}'s gradient" for n, _ in cpu.named_parameters()]]
    assert len(names) == len(results[0]) == len(results[1])
    for what, ours, theirs in zip(names, results[1], results[0]):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10, msg=lambda m: f"{what}: {m}")


def _backend_cases(backends):
    return [pytest.param(backend, case, id=f"{backend}-{option_id(case)}") for backend in backends
            for case in CELL_OPTIONS if backend != "native" or native_can_run(case[1])]


@pytest.mark.parametrize("lengths", [LENGTHS["mixed"]], ids=["mixed"])
@pytest.mark.parametrize("backend, case", _backend_cases(["fused", "auto", "native"])[::5])
def test_the_cuda_comparison_holds_on_the_cpu(backend, case, lengths):
    """The comparison the GPU runs below, run on the CPU for a sample of its cases: the test itself is right."""
    _against_the_cpu_reference(backend, case, lengths, "cpu")


@cuda
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("backend, case", _backend_cases(["fused", "auto", "native"]))
def test_cuda_equals_the_cpu_reference(backend, case, lengths):
    _against_the_cpu_reference(backend, case, lengths, "cuda")


def _autocast_close_to_float32(backend, case, device, dtype):
    """Mixed precision against float32 on ``device``: within 2% in outputs, 20% in gradients, in norm
    (tests/layers/test_autocast.py explains the margins)."""
    name, options = case
    torch.manual_seed(0)
    layer = randomise(rk.RNN(3, 16, cell=name, num_layers=2, bidirectional=True, backend=backend, **options))
    layer = layer.to(device)
    x = torch.randn(4, 5, 3).to(device)
    weights = torch.linspace(-1, 1, 4 * 5 * 32).view(4, 5, 32).to(device)
    results = []
    for autocast in (False, True):
        x_leaf = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype, enabled=autocast):
            out, _ = layer(x_leaf, lengths=[5, 2, 4, 3])
            loss = (out.float() * weights).sum()
        results.append([out.float(), *(g.float() for g in torch.autograd.grad(loss, [x_leaf, *layer.parameters()]))])
    for k, (ours, theirs) in enumerate(zip(results[1], results[0])):
        error = (ours - theirs).norm() / theirs.norm().clamp(min=1e-3)
        assert torch.isfinite(ours).all() and error < (0.02 if k == 0 else 0.2), (k, error)


@pytest.mark.parametrize("backend, case", _backend_cases(["fused", "auto", "reference"])[::7])
def test_the_cuda_autocast_comparison_holds_on_the_cpu(backend, case):
    _autocast_close_to_float32(backend, case, "cpu", torch.bfloat16)


@cuda
@pytest.mark.parametrize("backend, case", _backend_cases(["fused", "auto", "reference"]))
def test_cuda_autocast_float16_trains_close_to_float32(backend, case):
    _autocast_close_to_float32(backend, case, "cuda", torch.float16)
