"""Shared test helpers."""

import torch

import rnnkit as rk

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
