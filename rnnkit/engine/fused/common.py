"""Pieces every fused cell Function shares: the recurrent projection (with per-gate layer norm and its
hand-written backward), the packed noise masks, and in-place activations."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit.cells.base import LAYER_NORM_EPS, SequenceNoise
from rnnkit.engine.fused import compiled, workspace
from rnnkit.engine.fused.gemm import weight_grad
from rnnkit.engine.fused.packing import Packing

_layer_norm_backward = torch.ops.aten.native_layer_norm_backward


def first_order_only(backward):
    """Refuse double backward clearly: the hand-written backward is not itself differentiable.

    (``torch.autograd.function.once_differentiable`` is not enough: with ``create_graph=True`` and
    grad outputs that need no grad it lets a *wrong* second derivative through silently.)

    The backward also runs with ``torch.autocast`` off, like the forward (the engine computes in its
    parameters' dtype, :func:`rnnkit.engine.dispatch.run_layer_stacked`): autograd runs a backward under the
    autocast state of the ``backward()`` call, which would otherwise cast its products to float16/bfloat16.
    """

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError("double backward (create_graph=True) through rnnkit's fused engine is not "
                               "supported; use backend='reference' for higher-order gradients")
        device = next((g.device.type for g in grads if isinstance(g, Tensor)), None)
        if device is not None and autocast_on(device):
            with torch.autocast(device, enabled=False):
                return backward(ctx, *grads)
        return backward(ctx, *grads)

    return checked


class _Unrecorded:
    """A Function's ``ctx`` where autograd records nothing: it drops what a forward keeps for a backward."""

    __slots__ = ("layout", "setup", "cell_stats")

    def save_for_backward(self, *tensors) -> None:
        pass

    def mark_dirty(self, *tensors) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def run_function(function: type[torch.autograd.Function], records: bool, *args):
    """``function.apply(*args)``, or, where autograd would record nothing (``records`` false: no grad mode or no
    input that requires grad, as :func:`rnnkit.engine.fused.run_direction` decides), its forward called
    directly with a ctx that keeps nothing. ``apply`` costs 6-7 us a call even then, which counts where a
    generation loop runs a layer once a token (T=1)."""
    if records or torch._C._are_functorch_transforms_active():  # (vmap and co. go through apply's checks)
        return function.apply(*args)
    return function.forward(_Unrecorded(), *args)


def autocast_on(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for this device type (never for one it does not know, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # "unknown device type for autocast"
        return False


#: from this many elements on, tanh is computed on the CPU as 2*sigmoid(2x) - 1: ATen's tanh_ costs 4-7x
#: sigmoid_ per element there (24 vs 19 us at 16K floats, 48 vs 27 us at 32K); error <= 2e-7 in float32.
#: (On a GPU tanh is one kernel, and the route four.)
TANH_VIA_SIGMOID_FROM = 16384


def tanh_(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``out = tanh(x)`` (in place when ``out`` is None), by the fastest route for the size and device."""
    out = x if out is None else out
    if x.numel() >= TANH_VIA_SIGMOID_FROM and x.dtype == torch.float32 and x.device.type == "cpu":
        return torch.mul(x, 2.0, out=out).sigmoid_().mul_(2.0).sub_(1.0)
    return torch.tanh(x, out=out)


def take_gates(ctx, gates: Tensor, bias: Tensor | None) -> Tensor:
    """Let the Function work in place in the freshly made input-projection buffer (no copy), adding
    ``bias`` if given. The buffer must be returned among the Function's outputs.

    Being an output, it must reach the backward through ``ctx.save_for_backward``, never as a ``ctx``
    attribute: that would make a reference cycle (output -> its grad_fn -> ctx -> output) which keeps the
    graph's buffers alive until Python's garbage collector runs, out of the workspace pool's reach (6 MB of
    the GRU's 27 at (B, T, H) = (32, 100, 128)). The other buffers go the same way, so that autograd frees
    them as soon as the backward is done (unless the graph is retained).
    """
    ctx.mark_dirty(gates)
    ctx.set_materialize_grads(False)
    return gates if bias is None else gates.add_(bias)


def final_states(states: Tensor, packing: Packing) -> Tensor:
    """Each sorted sequence's state after its last step, ``[B, H]``, as a Function output: a copy, never a
    view of the ``[B+N, H]`` buffer."""
    final = packing.final_rows(states)
    return final.clone() if packing.last is None else final  # with lengths, final_rows gathers a new tensor


def state_outputs(states: Tensor, packing: Packing) -> tuple[Tensor, Tensor]:
    """What a Function returns of its ``[B+N, H]`` state buffer: every step's state ``[N, H]`` (a view, no
    copy) and :func:`final_states`.

    Two outputs rather than the buffer itself, so that their gradients reach the backward separately: were
    the buffer the output, autograd would build its gradient from the slices the caller takes by filling a
    zero ``[B+N, H]`` tensor and copying each slice's gradient in (1.2 of 14 ms per training step for the
    Elman RNN at (B, T, H) = (256, 50, 128)).

    Without lengths or reversal the steps' states go out as ``[T, B, H]``, the layout the caller returns, so that
    no view op stands between the Function and the user: a batch-first caller's gradient arrives as a transposed
    view, which the view op's backward would copy into a fresh tensor before :func:`state_grads` copies it again
    (alone, that copy took 0.02 ms at (B, T, H) = (32, 100, 128), 0.13 at (256, 50, 128) and 0.8 ms with 13 MB
    at (64, 200, 256)).
    """
    sequence = states[packing.batch:]
    if packing.gather is None:
        sequence = sequence.view(packing.steps, packing.batch, -1)
    return sequence, final_states(states, packing)


def state_grads(grad_sequence: Tensor | None, grad_final: Tensor | None, states: Tensor, packing: Packing) -> Tensor:
    """The gradient w.r.t. the state buffer from those of :func:`state_outputs` (None: output unused), in a
    pooled buffer the backward loops may overwrite: ``[B+N, H]``, zeros in the initial-state block."""
    batch = packing.batch
    grad = workspace.empty_like(states)
    if grad_sequence is None:
        grad.zero_()
    else:
        grad[:batch].zero_()
        grad[batch:].view_as(grad_sequence).copy_(grad_sequence)  # [N, H], or [T, B, H] in any layout
    if grad_final is not None:
        if packing.last is None:
            grad[-batch:].add_(grad_final)
        else:
            grad.index_add_(0, packing.last + batch, grad_final)
    return grad


def layer_norm_forward(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None):
    """``(y, mean, rstd)`` of a layer norm over the last dimension."""
    return torch.native_layer_norm(x, x.shape[-1:], weight, bias, LAYER_NORM_EPS)


def layer_norm_backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor | None = None) -> Tensor:
    """Gradient w.r.t. the input of :func:`layer_norm_forward` (affine gradients are summed by the caller)."""
    return _layer_norm_backward(grad, x, x.shape[-1:], mean, rstd, weight, None, [True, False, False])[0]


def normalised(x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """``(x - mean) * rstd``: the normalised values, recomputed for all steps at once."""
    return (x - mean) * rstd


class Projection:
    r"""The recurrent term of one group of ``g`` gates, step by step: ``inputs @ W^T``, or with a gain
    :math:`\gamma`, ``LN(inputs @ W^T) * gain`` with layer norm per gate. The bias is the caller's.

    Forward keeps what backward needs (pre-normalisation values and LN statistics); backward
    accumulates the gradient of the inputs each step and both parameter gradients once at the end
    (one GEMM over all steps).
    """

    def __init__(self, weight: Tensor, gain: Tensor | None, packing: Packing, hidden: int,
                 per_step: bool = False) -> None:
        """``per_step``: no backward will run (inference) and the compiled loops will, so that with layer norm
        ``pre`` and the statistics hold one step's rows ``[B, ...]`` (the loops index them by batch row),
        not every step's: one ``[N, g*H]`` buffer less to stream through memory."""
        self.weight = weight  # [g*H, H]
        self.gain = gain
        self.hidden = hidden
        self.groups = weight.shape[0] // hidden
        self.stats: tuple[Tensor, Tensor] | None = None  # compiled loops: (mean, rstd) [N, g] of all steps
        self.grad_pre_all: Tensor | None = None  # compiled loops: [N, g*H]
        self.grad_gain: Tensor | None = None  # compiled loops: [g*H] float64, accumulated step by step
        if gain is not None:
            rows = packing.batch if per_step else packing.rows
            self.pre = workspace.empty((rows, weight.shape[0]), weight)  # [N or B, g*H] before normalisation
            self._packing = packing
            self.means: list[Tensor] = []
            self.rstds: list[Tensor] = []
        self.grad_pre: list[Tensor] = []

    @functools.cached_property
    def weight_t(self) -> Tensor:  # [H, g*H], for the Python loops (made when first used: the compiled ones take W)
        return self.weight.t()

    # per-step views of ``pre`` for the Python loops, made when first used (the compiled loops index ``pre``
    # themselves; the two lists of T views took 0.23 ms, ~4% of a batch-1 LN-LSTM training step at T=100)
    @functools.cached_property
    def pre_views(self) -> list[Tensor]:
        return self._packing.step_views(self.pre)

    @functools.cached_property
    def pre_views_3d(self) -> list[Tensor]:
        return self._packing.step_views(self.pre.view(self._packing.rows, self.groups, self.hidden))

    def begin_backward(self) -> None:
        """Forget gradients of an earlier backward through the same graph (``retain_graph=True``)."""
        self.grad_pre = []
        self.grad_gain = None

    def compiled_buffers(self, backward: bool = False) -> list[Tensor]:
        """What the compiled loops take for this projection: ``[W]``, or with layer norm
        ``[W, gain, pre, mean, rstd]`` (+ ``grad_pre, grad_gain`` in backward), allocating the all-steps buffers."""
        if self.gain is None:
            return [self.weight]
        if self.stats is None:
            rows = self.pre.shape[0]
            self.stats = (self.pre.new_empty(rows, self.groups), self.pre.new_empty(rows, self.groups))
        buffers = [self.weight, self.gain, self.pre, *self.stats]
        if backward:
            # over pre when the graph is freed after this backward (each step's rows read first; lstm.py)
            self.grad_pre_all = self.pre if compiled.may_reuse_saved() else workspace.empty_like(self.pre)
            self.grad_gain = torch.zeros_like(self.gain, dtype=torch.float64)  # summed over all rows: in float64
            buffers += [self.grad_pre_all, self.grad_gain]
        return buffers

    def _normalise(self, inputs: Tensor, t: int) -> Tensor:
        torch.mm(inputs, self.weight_t, out=self.pre_views[t])
        normed, mean, rstd = layer_norm_forward(self.pre_views_3d[t])
        self.means.append(mean)
        self.rstds.append(rstd)
        return normed.view(inputs.shape[0], -1)

    def add_into(self, target: Tensor, inputs: Tensor, t: int) -> None:
        """``target += projection(inputs)`` for step ``t``."""
        if self.gain is None:
            target.addmm_(inputs, self.weight_t)
        else:
            target.addcmul_(self._normalise(inputs, t), self.gain)

    def _grad_pre(self, grad: Tensor, t: int) -> Tensor:
        """From d loss / d projection to d loss / d (inputs @ W^T), through the layer norm if any."""
        if self.gain is None:
            return grad
        rows = grad.shape[0]
        grad = layer_norm_backward((grad * self.gain).view(rows, self.groups, self.hidden),
                                   self.pre_views_3d[t], self.means[t], self.rstds[t]).view(rows, -1)
        self.grad_pre.append(grad)
        return grad

    def grad_inputs(self, grad: Tensor, t: int) -> Tensor:
        """d loss / d inputs at step ``t`` given ``grad`` = d loss / d projection (steps in decreasing order)."""
        return torch.mm(self._grad_pre(grad, t), self.weight)

    def grad_into(self, grad_inputs: Tensor, grad: Tensor, t: int, mask: Tensor | None = None) -> None:
        """``grad_inputs += d loss / d inputs`` at step ``t``; ``mask`` is the recurrent-dropout mask the
        inputs were multiplied by. Steps must come in decreasing order."""
        if mask is None:
            grad_inputs.addmm_(self._grad_pre(grad, t), self.weight)
        else:
            grad_inputs.addcmul_(self.grad_inputs(grad, t), mask)

    def parameter_grads(self, grad: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(d weight, d gain)`` from ``grad [N, g*H]`` (d loss / d projection) and ``inputs [N, H]``."""
        if self.gain is None:
            return weight_grad(grad, inputs), None
        if self.grad_gain is not None:  # the compiled loops filled grad_pre and summed the gain's gradient
            return weight_grad(self.grad_pre_all, inputs), self.grad_gain.to(self.gain.dtype)
        grad_pre = torch.cat(self.grad_pre[::-1])
        mean, rstd = torch.cat(self.means), torch.cat(self.rstds)
        rows = grad.shape[0]
        normed = normalised(self.pre.view(rows, self.groups, self.hidden), mean, rstd).view(rows, -1)
        return weight_grad(grad_pre, inputs), (grad * normed).sum(0)


@dataclass
class Masks:
    """A sequence's noise in packed layout: per packed row ``[N, H]`` tensors, and their per-step views."""

    recurrent: Tensor | None  # [N, H] recurrent-dropout mask of each row's h_{t-1}
    zoneout: tuple[Tensor, ...] | None  # per state tensor, [N, H]

    @classmethod
    def pack(cls, noise: SequenceNoise | None, packing: Packing) -> "Masks":
        if noise is None:
            return cls(None, None)
        recurrent = None if noise.recurrent is None else packing.rows_of(packing.sort(noise.recurrent)).contiguous()
        zoneout = None if noise.zoneout is None else tuple(packing.pack(m).contiguous() for m in noise.zoneout)
        return cls(recurrent, zoneout)

    def recurrent_views(self, packing: Packing) -> list[Tensor | None]:
        if self.recurrent is None:
            return [None] * len(packing.batch_sizes)
        return packing.step_views(self.recurrent)


def step_rows(views: list[Tensor], t: int, rows: int) -> Tensor:
    """Block ``t`` of a state buffer cut to the ``rows`` sequences still running at step ``t``."""
    view = views[t]
    return view if view.shape[0] == rows else view[:rows]
