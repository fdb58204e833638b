"""Reading what Lightning's CSV logger wrote, e.g. to plot learning curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read_training_log(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Per metric, ``(epoch, value)`` pairs from the newest ``metrics.csv`` under ``log_dir``. A value logged every
    step (the learning rate ``lr`` of a schedule) comes once a step, with the epoch the step belongs to.

    Raises:
        FileNotFoundError: no metrics.csv under ``log_dir`` (was ``log_dir=`` given to ``fit``?).
    """
    files = sorted(Path(log_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no metrics.csv under {log_dir}; pass log_dir=... to fit to write one")
    with files[-1].open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    # a row without an epoch (a per-step value) belongs to the epoch of the next row that has one: an epoch's
    # means are logged at its last step
    epochs, following = [], None
    for row in reversed(rows):
        following = int(float(row["epoch"])) if row.get("epoch") else following
        epochs.append(following)
    curves: dict[str, list[tuple[int, float]]] = {}
    for row, epoch in zip(rows, reversed(epochs)):
        if epoch is None:
            continue
        for name, value in row.items():
            if name in ("epoch", "step") or not value:
                continue
            number = float(value)
            if math.isfinite(number):
                curves.setdefault(name, []).append((epoch, number))
    return curves
