"""Diagnostics: gradient flow through time, recurrent-weight spectra, long-dependency experiments."""

from rnnkit.diagnostics.flow import GradientFlow, gradient_flow, recording_states, recurrent_weight_stats

__all__ = ["GradientFlow", "gradient_flow", "recording_states", "recurrent_weight_stats"]
