"""Training utilities: gradient clipping and Lightning callbacks."""

from rnnkit.training.clipping import clip_grad_norm, clip_grad_value, gradient_norm

__all__ = ["clip_grad_norm", "clip_grad_value", "gradient_norm"]
