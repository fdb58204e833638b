import pytest
import torch

from rnnkit.training import clip_grad_norm, clip_grad_value, gradient_norm


def params_with_grads(*grads):
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_clipping_by_norm_gives_exactly_c_g_over_norm():
    grads = (torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([[12.0]], dtype=torch.float64))
    params = params_with_grads(*grads)
    before = clip_grad_norm(params, 2.0)
    assert before == 13.0  # sqrt(9 + 16 + 144)
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, 2.0 * g / 13.0)
    assert gradient_norm(params) == pytest.approx(2.0, rel=1e-15)


def test_clipping_by_norm_leaves_small_gradients_alone():
    params = params_with_grads(torch.tensor([0.3, 0.4]))
    assert clip_grad_norm(params, 1.0) == pytest.approx(0.5)
    assert torch.equal(params[0].grad, torch.tensor([0.3, 0.4]))


def test_clipping_by_value_clamps_each_component():
    params = params_with_grads(torch.tensor([-5.0, 0.05, 2.0]))
    clip_grad_value(params, 0.1)
    assert torch.equal(params[0].grad, torch.tensor([-0.1, 0.05, 0.1]))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1"])
def test_bad_thresholds_are_named(bad):
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        clip_grad_norm(params_with_grads(torch.ones(2)), bad)
