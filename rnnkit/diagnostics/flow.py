r"""Gradient flow through time: how much of the loss's gradient reaches each step.

For a model, a batch and a loss, :func:`gradient_flow` returns :math:`\lVert\partial L/\partial h_t\rVert`
for every step ``t`` of every rnnkit recurrent layer (and direction) — the *total* derivative, through
the output at ``t`` and through every later step — plus each parameter's gradient norm and the spectral
radius and largest singular value of every recurrent weight block. Products of Jacobians over many steps
make the first of these shrink (vanish) or grow (explode) geometrically in ``T - t``
(Bengio et al. 1994; Pascanu et al. 2013).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnkit.cells.base import RecurrentCell
from rnnkit.layers.recurrent import RNN

GATE_NAMES = {1: ("h",), 3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}


@dataclass
class GradientFlow:
    """What :func:`gradient_flow` measured.

    - ``step_norms``: ``"<layer>/l<k>/<forward|reverse>"`` -> ``[T]`` norms of dL/dh_t (Frobenius norm
      over the batch and hidden units; zero on steps that are padding for every sequence);
    - ``parameter_norms``: parameter name -> norm of its gradient;
    - ``recurrent_weights``: ``"<cell>/<gate>"`` -> ``(spectral radius, largest singular value)`` of that
      gate's ``H x H`` block of ``weight_hh``;
    - ``loss``: the loss value.
    """

    step_norms: dict[str, Tensor]
    parameter_norms: dict[str, float]
    recurrent_weights: dict[str, tuple[float, float]]
    loss: float

    def first_to_last(self, name: str) -> float:
        """``||dL/dh_1|| / ||dL/dh_T||``: far below 1 means vanishing, far above 1 exploding."""
        norms = self.step_norms[name]
        return float(norms[0] / norms[-1]) if norms[-1] > 0 else float("inf")


def recurrent_layers(model: nn.Module) -> list[tuple[str, RNN]]:
    layers = [(name or type(module).__name__, module) for name, module in model.named_modules()
              if isinstance(module, RNN)]
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) contains no rnnkit recurrent layer (rk.RNN, rk.LSTM, "
                         "rk.GRU or rk.SimpleRNN); gradient flow is measured through those")
    return layers


@contextmanager
def recording_states(model: nn.Module) -> Iterator[dict[str, dict[int, Tensor]]]:
    """While active, every rnnkit layer in ``model`` runs the reference loop and records each step's
    hidden state ``h_t``: ``records["<layer>/l<k>/<direction>"][t]``."""
    records: dict[str, dict[int, Tensor]] = {}
    layers = recurrent_layers(model)

    def observer(name: str) -> Callable:
        def observe(layer: int, direction: int, t: int, state) -> None:
            key = f"{name}/l{layer}/{'reverse' if direction else 'forward'}"
            records.setdefault(key, {})[t] = state[0]

        return observe

    for name, layer in layers:
        layer.step_observer = observer(name)
    try:
        yield records
    finally:
        for _, layer in layers:
            layer.step_observer = None


def recurrent_weight_stats(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Spectral radius and largest singular value of each gate's block of every cell's ``weight_hh``."""
    stats = {}
    for name, cell in model.named_modules():
        if not isinstance(cell, RecurrentCell):
            continue
        with torch.no_grad():
            blocks = cell.weight_hh.detach().double().chunk(cell.num_gates)
            for gate, block in zip(GATE_NAMES[cell.num_gates], blocks):
                radius = torch.linalg.eigvals(block).abs().max().item()
                singular = torch.linalg.matrix_norm(block, ord=2).item()
                stats[f"{name}/{gate}"] = (radius, singular)
    return stats


def gradient_flow(model: nn.Module, inputs, targets, loss_fn: Callable[[Tensor, Tensor], Tensor],
                  **forward_kwargs) -> GradientFlow:
    """Measure gradient flow for ``loss_fn(model(inputs, **forward_kwargs), targets)``.

    Runs the reference engine (so every step's state exists as a tensor) and asks autograd for the
    gradients directly: parameters' ``.grad`` are left as they were.

    Raises:
        ValueError: ``model`` has no rnnkit recurrent layer, or the loss does not depend on any of them.
    """
    with recording_states(model) as records:
        loss = loss_fn(model(inputs, **forward_kwargs), targets)
    names = sorted(records)
    states = [records[name][t] for name in names for t in sorted(records[name])]
    parameters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not states:
        raise ValueError("the model ran no recurrent step; was it called with an empty batch?")
    grads = torch.autograd.grad(loss, states + [p for _, p in parameters], allow_unused=True)
    step_norms, index = {}, 0
    for name in names:
        steps = len(records[name])
        norms = [0.0 if g is None else g.norm().item() for g in grads[index: index + steps]]
        step_norms[name] = torch.tensor(norms, dtype=torch.float64)
        index += steps
    if all(float(n.abs().sum()) == 0 for n in step_norms.values()):
        raise ValueError("the loss does not depend on any recurrent state (all dL/dh_t are zero)")
    parameter_norms = {n: (0.0 if g is None else g.norm().item())
                       for (n, _), g in zip(parameters, grads[index:])}
    return GradientFlow(step_norms, parameter_norms, recurrent_weight_stats(model), loss.item())
