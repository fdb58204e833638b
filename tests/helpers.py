"""Shared test helpers."""

import lightning.pytorch as pl
import pytest
import torch

import rnnkit as rk

#: marks a test that needs a CUDA device (benchmarks/gpu_check.sh runs them where there is one)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")



class InterruptAt(pl.Callback):
    """Press Ctrl-C (raise KeyboardInterrupt, as the signal handler does) when epoch ``epoch`` starts."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


# every cell configuration the suite exercises: (cell name, options)
CELL_OPTIONS = [
    ("rnn", {}),
    ("rnn", {"nonlinearity": "relu"}),
    ("rnn", {"layer_norm": True}),
    ("gru", {}),
    ("gru", {"reset_after": False}),
    ("gru", {"layer_norm": True}),
    ("gru", {"layer_norm": True, "reset_after": False}),
    ("lstm", {}),
    ("lstm", {"peepholes": True}),
    ("lstm", {"layer_norm": True}),
    ("lstm", {"layer_norm": True, "peepholes": True}),
    ("rnn", {"bias": False}),
    ("gru", {"bias": False}),
    ("lstm", {"bias": False}),
]


def native_can_run(options):
    """Whether torch.nn's kernels (the native backend) compute a cell with these options."""
    return not any(options.get(k) for k in ("layer_norm", "peepholes", "recurrent_dropout", "zoneout")) \
        and options.get("reset_after", True)


def option_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def make_cell(name, options, input_size=3, hidden_size=4, dtype=torch.float64):
    """A cell with every parameter randomised (so zero-initialised ones like peepholes matter)."""
    cell = rk.cells.CELLS[name](input_size, hidden_size, **options).to(dtype)
    randomise(cell)
    return cell


def randomise(module, scale=0.5):
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * scale)
    return module


def tolerance(dtype):
    """The engine contract: float64 to 1e-10, float32 to 1e-5."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def assert_close(actual, expected, dtype=torch.float64, what=""):
    tol = tolerance(dtype)
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def engine_function(run_direction, cell, lengths=None, reverse=False, noise=None):
    """An engine as a function of ``(x, *state, *parameters)`` for gradcheck, which perturbs the cell's
    parameters in place (so they are passed as inputs but read from the cell)."""

    def run(x, *tensors):
        out, final = run_direction(cell, x, tensors[: cell.state_size], lengths, reverse, noise)
        return (out, *final)

    return run


def gradcheck_engine(run_direction, case, reverse, steps=4, lengths=(4, 1, 3)):
    """float64 gradcheck of an engine through time, with lengths, noise and every parameter."""
    name, options = case
    cell = make_cell(name, {**options, "recurrent_dropout": 0.2, "zoneout": 0.3})
    batch = len(lengths)
    noise = cell.sample_noise(steps, batch)
    x = torch.randn(steps, batch, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(batch, 4, dtype=torch.float64, requires_grad=True) for _ in range(cell.state_size))
    function = engine_function(run_direction, cell, torch.tensor(lengths), reverse, noise)
    return torch.autograd.gradcheck(function, (x, *state, *cell.parameters()))
