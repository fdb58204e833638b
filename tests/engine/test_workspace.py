"""The fused engine's buffer pool: memory comes back only when nothing uses it, within its limit."""

import contextlib
import gc

import pytest
import torch

import rnnkit as rk
from rnnkit.engine.fused import workspace

MB = 1 << 20


@pytest.fixture(autouse=True)
def empty_pool():
    workspace.release()
    yield
    workspace.release()


def test_a_free_buffer_is_handed_out_again_and_one_in_use_is_not():
    like = torch.empty(0)
    first = workspace.empty((512, 1024), like)  # 2 MiB
    address = first.data_ptr()
    second = workspace.empty((512, 1024), like)
    assert second.data_ptr() != address  # `first` still uses its memory
    view = first[:10]
    del first
    assert workspace.empty((512, 1024), like).data_ptr() != address  # a view still uses it
    del view
    again = workspace.empty((256, 2048), like)  # same size, another shape
    assert again.data_ptr() == address and again.shape == (256, 2048) and again.is_contiguous()
    assert workspace.pooled_bytes() == 3 * 2 * MB  # first, second and the one made while the view lived


def test_small_buffers_and_other_devices_are_not_pooled():
    small = workspace.empty((10, 10), torch.empty(0))
    assert small.shape == (10, 10) and workspace.pooled_bytes() == 0
    elsewhere = workspace.empty((1024, 1024), torch.empty(0, device="meta"))  # 4 MiB, but not on the CPU
    assert elsewhere.device.type == "meta" and elsewhere.shape == (1024, 1024) and workspace.pooled_bytes() == 0


def test_a_buffer_is_reused_only_when_it_wastes_less_than_half():
    like = torch.empty(0)
    big = workspace.empty((4 * MB // 4,), like)  # 4 MiB
    address = big.data_ptr()
    del big
    assert workspace.empty((MB // 4,), like).data_ptr() != address  # 1 MiB in 4: too wasteful
    reused = workspace.empty((3 * MB // 4,), like)
    assert reused.data_ptr() == address and reused.numel() == 3 * MB // 4


def test_the_pool_stays_within_its_limit_and_release_frees_unused_memory(monkeypatch):
    monkeypatch.setenv("RNNKIT_WORKSPACE_MB", "3")
    like = torch.empty(0)
    a = workspace.empty((MB // 4,), like)
    b = workspace.empty((MB // 2,), like)
    assert workspace.pooled_bytes() == 3 * MB
    c = workspace.empty((MB // 2,), like)  # would pass the limit while a and b are in use: not kept
    assert workspace.pooled_bytes() == 3 * MB and c.numel() == MB // 2
    del a
    d = workspace.empty((MB // 2,), like)  # unused a is dropped; b in use + d would still pass the limit
    assert workspace.pooled_bytes() == 2 * MB and d.numel() == MB // 2
    del b, c, d
    assert workspace.release() == 2 * MB and workspace.pooled_bytes() == 0


def test_zero_megabytes_turns_the_pool_off_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.setenv("RNNKIT_WORKSPACE_MB", "0")
    workspace.empty((MB,), torch.empty(0))
    assert workspace.pooled_bytes() == 0
    monkeypatch.setenv("RNNKIT_WORKSPACE_MB", "lots")
    with pytest.raises(ValueError, match="RNNKIT_WORKSPACE_MB must be a number of MiB.*'lots'"):
        workspace.empty((MB,), torch.empty(0))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_outputs_a_caller_keeps_are_never_overwritten_by_later_calls(cell, monkeypatch):
    """Big enough for every buffer to be pooled; results kept from call 1 must survive calls 2 and 3, and
    training with the pool must equal training without it."""
    torch.manual_seed(0)
    layer = rk.RNN(8, 256, cell=cell, backend="fused", layer_norm=cell == "lstm")
    xs = [torch.randn(16, 80, 8, requires_grad=True) for _ in range(3)]

    def step(x):
        out, _ = layer(x)
        (out * out).mean().backward()
        return out.detach(), x.grad.clone(), [p.grad.clone() for p in layer.parameters()]

    kept = []
    for x in xs:
        layer.zero_grad()
        kept.append(step(x))
    assert workspace.pooled_bytes() > 0
    snapshot = [(o.clone(), g.clone()) for o, g, _ in kept]
    for x in xs:  # run again: the pool now hands out memory of finished calls
        layer.zero_grad()
        x.grad = None
        step(x)
    for (out, grad, _), (out0, grad0) in zip(kept, snapshot):
        assert torch.equal(out, out0) and torch.equal(grad, grad0)
    workspace.release()
    monkeypatch.setenv("RNNKIT_WORKSPACE_MB", "0")
    for x, (out, grad, params) in zip(xs, kept):
        layer.zero_grad()
        x.grad = None
        out2, grad2, params2 = step(x)
        assert torch.equal(out, out2) and torch.equal(grad, grad2)
        assert all(torch.equal(a, b) for a, b in zip(params, params2))


def test_pooled_buffers_work_under_inference_mode_and_no_grad_and_stay_correct():
    torch.manual_seed(0)
    layer = rk.GRU(8, 256, backend="fused")
    x = torch.randn(16, 80, 8)
    with torch.no_grad():
        expected = layer(x)[0].clone()
    with torch.inference_mode():
        first = layer(x)[0]
        again = layer(x)[0]
    assert torch.equal(first, expected) and torch.equal(again, expected)
    out, _ = layer(x)  # a normal call after inference-mode calls released their buffers
    out.sum().backward()
    assert torch.equal(out.detach(), expected)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("python_loops", [False, True])
@pytest.mark.parametrize("options", [{"cell": "rnn", "zoneout": 0.1}, {"cell": "gru"}, {"cell": "gru", "layer_norm": True},
                                     {"cell": "lstm"}, {"cell": "lstm", "layer_norm": True}])
def test_a_finished_graph_gives_its_buffers_back_without_the_garbage_collector(options, python_loops):
    """No reference cycle may hold the buffers: an output kept as a ctx attribute (output -> grad_fn -> ctx ->
    output) did, so the pool could not reuse them until Python's collector ran."""
    from rnnkit.engine.fused import compiled

    torch.manual_seed(0)
    layer = rk.RNN(8, 256, backend="fused", **options).train()
    x = torch.randn(16, 80, 8)
    gc.collect()  # what earlier tests left behind
    workspace.release()
    gc.disable()
    try:
        with compiled.python_loops() if python_loops else contextlib.nullcontext():
            out, state = layer(x)
            (out.sum() + sum(s.sum() for s in state)).backward()
        assert workspace.pooled_bytes() > 0
        del out, state
        released = workspace.release()
        assert released > 0 and workspace.pooled_bytes() == 0, (released, workspace.pooled_bytes())
    finally:
        gc.enable()
