"""torch.func over rnnkit layers: gradients and per-sample gradients (``vmap(grad(...))``) through ``auto``."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

import rnnkit as rk
from tests.helpers import assert_close

CASES = [("gru", {}), ("lstm", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {"layer_norm": True})]


def loss_of(layer, parameters, x, lengths):
    outputs, final = functional_call(layer, parameters, (x,), {"lengths": lengths})
    finals = final if isinstance(final, tuple) else (final,)
    return outputs.pow(2).sum() + sum(f.sum() for f in finals)


def per_sample_truth(layer, x, lengths):
    """Each sequence's gradients alone at its own length, by ordinary autograd (the independent truth)."""
    truth = []
    for b, n in enumerate(lengths):
        layer.zero_grad()
        outputs, final = layer(x[b:b + 1, :n])
        finals = final if isinstance(final, tuple) else (final,)
        (outputs.pow(2).sum() + sum(f.sum() for f in finals)).backward()
        truth.append({name: p.grad.clone() for name, p in layer.named_parameters()})
    return truth


@pytest.mark.parametrize(("cell", "options"), CASES)
def test_torch_func_gradients_and_per_sample_gradients(cell, options):
    torch.manual_seed(0)
    layer = rk.RNN(3, 4, 2, cell=cell, bidirectional=True, **options).double()  # backend="auto"
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    parameters = {name: p.detach() for name, p in layer.named_parameters()}

    # grad over a padded batch: the sum of each sequence's gradients
    lengths = torch.tensor([6, 2, 4])
    whole = grad(loss_of, argnums=1)(layer, parameters, x, lengths)
    truth = per_sample_truth(layer, x, lengths.tolist())
    for name in parameters:
        assert_close(whole[name], sum(t[name] for t in truth))

    # per-sample gradients, vmap over the batch (equal lengths: a length decides which steps run, which vmap cannot
    # batch over)
    each = vmap(grad(lambda p, x_b: loss_of(layer, p, x_b[None], None)), in_dims=(None, 0))(parameters, x)
    truth = per_sample_truth(layer, x, [6, 6, 6])
    for name in parameters:
        assert each[name].shape == (3, *parameters[name].shape)
        for b in range(3):
            assert_close(each[name][b], truth[b][name])


def test_the_fused_backend_refuses_torch_func_by_name():
    layer = rk.GRU(3, 4, backend="fused")
    parameters = {name: p.detach() for name, p in layer.named_parameters()}
    with pytest.raises(ValueError, match=r"backend='fused' cannot run under torch\.func's transforms"):
        grad(lambda p: functional_call(layer, p, (torch.randn(2, 5, 3),))[0].sum())(parameters)
    layer(torch.randn(2, 5, 3))  # and runs outside them
