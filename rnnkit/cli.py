"""The ``rnnkit`` command."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(help="rnnkit: recurrent neural networks on PyTorch.", no_args_is_help=True,
                  add_completion=False)
console = Console()


@app.command()
def demo(epochs: int = typer.Option(30, min=1, help="Training epochs."),
         seed: int = typer.Option(0, help="Random seed.")) -> None:
    """Train an LSTM forecaster on generated sine waves and compare it with the naive forecast.

    Example: rnnkit demo --epochs 10
    """
    from rnnkit.demo import run_demo

    result = run_demo(epochs=epochs, seed=seed)
    console.print(f"LSTM one-step forecast, test MSE: [bold]{result.model_mse:.5f}[/bold]")
    console.print(f"naive (last value) forecast, test MSE: {result.naive_mse:.5f}")
    console.print(f"the LSTM's error is {result.model_mse / result.naive_mse:.1%} of the naive baseline's")


@app.command()
def version() -> None:
    """Print rnnkit's version."""
    from rnnkit import __version__

    console.print(__version__)


if __name__ == "__main__":
    app()
