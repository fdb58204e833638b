"""Exact weight interchange with torch.nn's nn.RNN / nn.LSTM / nn.GRU.

torch.nn names a layer's parameters ``weight_ih_l{k}{suffix}`` (suffix ``_reverse`` for the backward
direction); rnnkit's cells hold the same tensors, same layout and gate order, as ``weight_ih`` etc.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnkit.engine.native import unsupported

TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
PARAMETER_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def torch_kind(module: nn.Module) -> str:
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.GRU):
        return "gru"
    if isinstance(module, nn.RNN):
        return "rnn_tanh" if module.nonlinearity == "tanh" else "rnn_relu"
    raise TypeError(f"module must be a torch.nn.LSTM, GRU or RNN, got {type(module).__name__}")


def _pairs(layer, torch_module):
    """Yield (rnnkit parameter, torch.nn parameter) for every weight both hold."""
    for index, cell in enumerate(layer.cells):
        layer_index, direction = divmod(index, layer.num_directions)
        suffix = f"_l{layer_index}" + ("_reverse" if direction else "")
        for name in PARAMETER_NAMES[: 4 if cell.bias else 2]:
            yield getattr(cell, name), getattr(torch_module, name + suffix)


def from_torch(layer_class, module: nn.Module, backend: str):
    """Build a ``layer_class`` (or the matching class, for the generic RNN) with ``module``'s weights."""
    from rnnkit.layers.recurrent import GRU, LSTM, RNN, SimpleRNN

    kind = torch_kind(module)
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module has proj_size={module.proj_size}; rnnkit's LSTM has no projection")
    target = {"lstm": LSTM, "gru": GRU, "rnn_tanh": SimpleRNN, "rnn_relu": SimpleRNN}[kind]
    if layer_class is not RNN and layer_class is not target:
        raise TypeError(f"{layer_class.__name__}.from_torch needs a module of its own kind, "
                        f"got {type(module).__name__}; use rk.RNN.from_torch for any kind")
    options = {"nonlinearity": module.nonlinearity} if kind.startswith("rnn") else {}
    reference = next(module.parameters())
    layer = target(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                   batch_first=module.batch_first, dropout=float(module.dropout),
                   bidirectional=module.bidirectional, backend=backend, **options)
    layer.to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        for ours, theirs in _pairs(layer, module):
            ours.copy_(theirs)
    return layer.train(module.training)


def to_torch(layer) -> nn.Module:
    """The torch.nn module computing exactly what ``layer`` computes, with copied weights."""
    first = layer.cells[0]
    reason = unsupported(first, None)
    if reason is not None:
        raise ValueError(f"to_torch cannot express {reason}")
    options = {"nonlinearity": first.nonlinearity} if first.kind.startswith("rnn") else {}
    module = TORCH_CLASSES[first.kind](
        first.input_size, first.hidden_size, layer.num_layers, bias=first.bias, batch_first=layer.batch_first,
        dropout=layer.dropout, bidirectional=layer.bidirectional, **options,
    ).to(device=first.weight_ih.device, dtype=first.weight_ih.dtype)
    with torch.no_grad():
        for ours, theirs in _pairs(layer, module):
            theirs.copy_(ours)
    return module.train(layer.training)
