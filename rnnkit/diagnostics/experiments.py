"""Long-dependency experiments: which recurrent models learn the adding problem, and why the others fail.

:func:`run_adding` trains each model on the adding problem of length ``T`` (Hochreiter & Schmidhuber
1997), measures its gradient flow at initialisation, and says in one line what happened.
:func:`run_exploding` shows exploding gradients (an identity-initialised relu RNN trained at a
learning rate at which its gradients spike) with no clipping, clipping by norm and clipping by value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import rnnkit as rk
from rnnkit.data.synthetic import AddingTask
from rnnkit.diagnostics.flow import GradientFlow, gradient_flow
from rnnkit.training.clipping import clip_grad_norm, clip_grad_value

SOLVED_BELOW = 0.05  # test MSE counted as "solved" (the trivial baseline scores 0.167)
EXPLODED_ABOVE = 1e6  # a gradient norm above this during training counts as an explosion


@dataclass(frozen=True)
class ModelSpec:
    cell: str
    options: dict = field(default_factory=dict)
    clip_norm: float | None = None
    clip_value: float | None = None
    learning_rate: float = 1e-2


LEARNING_RATE = 1e-2  # Adam, the same for every model so that only the architecture differs

ADDING_MODELS = {
    "rnn-tanh": ModelSpec("rnn"),
    "rnn-tanh (torch init)": ModelSpec("rnn", {"input_init": "torch", "recurrent_init": "torch"}),
    "rnn-tanh+clip": ModelSpec("rnn", clip_norm=1.0),
    "irnn+clip": ModelSpec("rnn", {"nonlinearity": "relu"}, clip_norm=1.0),
    "lstm": ModelSpec("lstm"),
    "gru": ModelSpec("gru"),
    "ln-lstm": ModelSpec("lstm", {"layer_norm": True}),
}


class LastStepRegressor(nn.Module):
    """A recurrent layer and a linear head on the last step's output."""

    def __init__(self, spec: ModelSpec, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.rnn = rk.RNN(input_size, hidden_size, cell=spec.cell, **spec.options)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@dataclass
class RunResult:
    name: str
    spec: ModelSpec
    curve: list[tuple[int, float]]  # (training step, test MSE)
    flow: GradientFlow  # at initialisation
    trained_flow: GradientFlow  # after training
    steps_to_solve: int | None
    seconds: float
    max_gradient_norm: float
    nonfinite_steps: int

    @property
    def final_mse(self) -> float:
        return self.curve[-1][1]

    @property
    def vanishing_ratio(self) -> float:
        """||dL/dh_1|| / ||dL/dh_T|| at initialisation."""
        return self.flow.first_to_last("rnn/l0/forward")

    @property
    def trained_ratio(self) -> float:
        """||dL/dh_1|| / ||dL/dh_T|| after training."""
        return self.trained_flow.first_to_last("rnn/l0/forward")

    def verdict(self, baseline: float) -> str:
        ratio = f"||dL/dh_1|| / ||dL/dh_T|| = {self.trained_ratio:.1e} after training"
        exploded = self.max_gradient_norm > EXPLODED_ABOVE or self.nonfinite_steps > 0
        notes = []
        if self.max_gradient_norm > EXPLODED_ABOVE:
            notes.append(f"gradient norm reached {self.max_gradient_norm:.1e}")
        if self.nonfinite_steps:
            notes.append(f"{self.nonfinite_steps} updates skipped for non-finite loss or gradient")
        extra = "".join(f"; {note}" for note in notes)
        if self.steps_to_solve is not None:
            return f"solved in {self.steps_to_solve} steps (test MSE {self.final_mse:.4f}; {ratio}{extra})"
        if self.final_mse > 0.8 * baseline:
            if exploded:
                cause = "exploding gradients"
            elif self.trained_ratio < 1e-3:
                cause = "vanishing gradient"
            else:
                cause = "no long-range signal learned yet"
            return f"failed: no better than the trivial baseline (MSE {self.final_mse:.4g}); {ratio}{extra}: {cause}"
        return f"learning but not solved: MSE {self.final_mse:.3f} after {self.curve[-1][0]} steps; {ratio}{extra}"


def train_model(name: str, spec: ModelSpec, task: AddingTask, steps: int, batch: int, hidden: int, seed: int,
                eval_every: int, stop_below: float,
                progress: Callable[[str, int, float], None] | None) -> RunResult:
    """Train one model on ``task`` with Adam (clipping as ``spec`` says); evaluate every ``eval_every``
    steps on 1000 fixed test sequences; measure gradient flow before and after training."""
    torch.manual_seed(seed)
    model = LastStepRegressor(spec, 2, hidden)
    test_x, test_y = task.batch(1000, torch.Generator().manual_seed(seed + 1))
    flow = gradient_flow(model, test_x[:128], test_y[:128], nn.functional.mse_loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    generator = torch.Generator().manual_seed(seed + 2)
    curve, solved, max_norm, nonfinite = [], None, 0.0, 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = task.batch(batch, generator)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if spec.clip_norm is not None:
            norm = clip_grad_norm(model.parameters(), spec.clip_norm)
        elif spec.clip_value is not None:
            norm = clip_grad_value(model.parameters(), spec.clip_value)
        else:
            norm = rk.training.gradient_norm(model.parameters())
        if not (math.isfinite(norm) and math.isfinite(loss.item())):
            nonfinite += 1
            continue  # skip the update, as a careful training loop would
        max_norm = max(max_norm, norm)
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                mse = nn.functional.mse_loss(model.eval()(test_x), test_y).item()
            model.train()
            curve.append((step, mse))
            if progress is not None:
                progress(name, step, mse)
            if solved is None and mse < SOLVED_BELOW:
                solved = step
            if mse < stop_below:
                break
    seconds = time.perf_counter() - start
    if not curve:
        curve.append((0, float("nan")))
    trained_flow = gradient_flow(model, test_x[:128], test_y[:128], nn.functional.mse_loss)
    return RunResult(name, spec, curve, flow, trained_flow, solved, seconds, max_norm, nonfinite)


def run_adding(length: int, models: dict[str, ModelSpec] | None = None, steps: int = 1500, batch: int = 64,
               hidden: int = 32, seed: int = 0, eval_every: int = 50, stop_below: float = 0.005,
               progress=None) -> list[RunResult]:
    """Train every model on the adding problem of length ``length``; stop a model early once its test
    MSE falls below ``stop_below``."""
    task = AddingTask(length)
    models = ADDING_MODELS if models is None else models
    return [train_model(name, spec, task, steps, batch, hidden, seed, eval_every, stop_below, progress)
            for name, spec in models.items()]


def exploding_models(learning_rate: float = 1e-2) -> dict[str, ModelSpec]:
    """Identity-initialised relu RNNs (IRNN, Le et al. 2015) trained with a learning rate at which their
    gradients spike: without clipping, clipping by norm, clipping by value."""
    options = {"nonlinearity": "relu", "recurrent_init": "identity"}
    return {
        "irnn, no clipping": ModelSpec("rnn", options, learning_rate=learning_rate),
        "irnn, clip by norm 1.0": ModelSpec("rnn", options, clip_norm=1.0, learning_rate=learning_rate),
        "irnn, clip by value 0.1": ModelSpec("rnn", options, clip_value=0.1, learning_rate=learning_rate),
    }


def run_exploding(length: int, steps: int = 400, hidden: int = 64, seed: int = 0, progress=None) -> list[RunResult]:
    """Train the :func:`exploding_models` on the adding problem and record their gradient norms."""
    task = AddingTask(length)
    return [train_model(name, spec, task, steps, 64, hidden, seed, 25, 0.0, progress)
            for name, spec in exploding_models().items()]
