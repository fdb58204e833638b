"""The ``rnnkit`` command."""

from __future__ import annotations

import time
from pathlib import Path

import torch
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
def bench(
    quick: bool = typer.Option(False, "--quick", help="Two shapes, no reference loop, no scaling or memory runs."),
    threads: int = typer.Option(0, min=0, help="torch threads (0: torch's default). 1 is steadier on a busy machine."),
    cells: str = typer.Option(",".join(("rnn", "gru", "lstm", "ln-lstm")), help="Comma-separated: rnn,gru,lstm,ln-lstm."),
    markdown: Path = typer.Option(None, help="Also write the results as Markdown to this file."),
) -> None:
    """Time rnnkit's backends against torch.nn in the same run and print the ratios.

    Examples: rnnkit bench --quick ;  rnnkit bench --threads 1 --markdown results.md
    """
    import platform

    from rich.progress import Progress

    from rnnkit import benchmark

    chosen = tuple(c.strip() for c in cells.split(",") if c.strip())
    unknown = [c for c in chosen if c not in benchmark.CELLS]
    if unknown:
        raise typer.BadParameter(f"unknown cell {unknown[0]!r}; choose from {', '.join(benchmark.CELLS)}",
                                 param_hint="--cells")
    if threads:
        torch.set_num_threads(threads)
    shapes = benchmark.QUICK_SHAPES if quick else benchmark.SHAPES
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(chosen) * len(shapes) * 2)
        rows = benchmark.run_speed(chosen, shapes, reference=not quick, budget_ms=800 if quick else 3000,
                                   progress=lambda row: progress.update(
                                       task, advance=1, description=f"{row.cell} {row.shape} {row.mode}"))
    console.print(benchmark.speed_table(rows))
    scaling = memory = []
    if not quick:
        with console.status("time vs sequence length"):
            scaling = benchmark.run_scaling()
        with console.status("peak training memory"):
            memory = benchmark.run_memory()
    if markdown is not None:
        header = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads, torch {torch.__version__}.")
        from rnnkit.io import atomic_write_text

        atomic_write_text(markdown, benchmark.markdown(rows, scaling, memory, header))
        console.print(f"wrote {markdown}")


@app.command()
def version() -> None:
    """Print rnnkit's version."""
    from rnnkit import __version__

    console.print(__version__)


if __name__ == "__main__":
    app()
