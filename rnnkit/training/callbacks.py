"""Lightning callbacks that watch training."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import lightning.pytorch as pl

from rnnkit.training.clipping import gradient_norm


class GradientNormMonitor(pl.Callback):
    """Log gradient norms every training step and warn when gradients vanish or explode.

    Logged (to every logger the Trainer has: CSV, TensorBoard, ...):

    - ``grad_norm/total``: norm of all gradients before clipping;
    - ``grad_norm/total_clipped``: the same after the Trainer's clipping (``gradient_clip_val``);
    - ``grad_norm/clipped_fraction``: fraction of steps so far whose gradients clipping changed;
    - ``grad_norm/<module>``: norm of each module's own parameters' gradients before clipping
      (every cell of a recurrent layer, i.e. each layer and direction, and each head).

    Args:
        vanishing_below: warn when the total norm falls below this.
        exploding_above: warn when the total norm rises above this (or is not finite).
    """

    def __init__(self, vanishing_below: float = 1e-6, exploding_above: float = 1e3) -> None:
        super().__init__()
        if not 0 <= vanishing_below < exploding_above:
            raise ValueError(f"need 0 <= vanishing_below < exploding_above, got {vanishing_below} and "
                             f"{exploding_above}")
        self.vanishing_below = vanishing_below
        self.exploding_above = exploding_above
        self._hooks = []
        self._pre: dict[str, float] = {}
        self._post: float | None = None
        self.steps = 0
        self.clipped_steps = 0
        self._warned: set[str] = set()

    # -------------------------------------------------------------- hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hooks = [optimizer.register_step_post_hook(self._after_step) for optimizer in trainer.optimizers]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        """Gradients are complete here and not yet clipped."""
        groups = defaultdict(list)
        for name, parameter in pl_module.named_parameters():
            if parameter.grad is not None:
                groups[name.rpartition(".")[0] or name].append(parameter)
        self._pre = {"total": gradient_norm([p for ps in groups.values() for p in ps])}
        self._pre.update({module: gradient_norm(ps) for module, ps in groups.items()})
        self._check(self._pre["total"], trainer.global_step)

    def _after_step(self, optimizer, args, kwargs) -> None:
        """After ``optimizer.step``: the gradients are as clipping left them."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._post = gradient_norm(params)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self._pre or self._post is None:
            return
        self.steps += 1
        total = self._pre["total"]
        if not math.isclose(self._post, total, rel_tol=1e-6, abs_tol=1e-12):
            self.clipped_steps += 1
        metrics = {f"grad_norm/{name}": value for name, value in self._pre.items()}
        metrics["grad_norm/total_clipped"] = self._post
        metrics["grad_norm/clipped_fraction"] = self.clipped_steps / self.steps
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._pre, self._post = {}, None

    def _check(self, total: float, step: int) -> None:
        if not math.isfinite(total) or total > self.exploding_above:
            kind, advice = "exploding", "clip by norm (gradient_clip_val) or lower the learning rate"
        elif total < self.vanishing_below:
            kind, advice = "vanishing", "try LSTM/GRU, layer norm, orthogonal init or shorter sequences"
        else:
            return
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"gradients are {kind} at step {step}: total norm {total:.3g} "
                          f"(thresholds {self.vanishing_below:g} / {self.exploding_above:g}); {advice}",
                          RuntimeWarning, stacklevel=2)


__all__ = ["GradientNormMonitor"]
