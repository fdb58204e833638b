"""Engines that run a cell over a whole sequence, forward and backward."""

from rnnkit.engine.dispatch import BACKENDS, choose_backend, run_layer, run_layer_stacked
from rnnkit.engine.reference import run_direction

__all__ = ["BACKENDS", "choose_backend", "run_direction", "run_layer", "run_layer_stacked"]
