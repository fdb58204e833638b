"""Reading what Lightning's CSV logger wrote, e.g. to plot learning curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read_training_log(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Per metric, ``(epoch, value)`` pairs from the newest ``metrics.csv`` under ``log_dir``.

    Raises:
        FileNotFoundError: no metrics.csv under ``log_dir`` (was ``log_dir=`` given to ``fit``?).
    """
    files = sorted(Path(log_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no metrics.csv under {log_dir}; pass log_dir=... to fit to write one")
    curves: dict[str, list[tuple[int, float]]] = {}
    with files[-1].open(newline="") as stream:
        for row in csv.DictReader(stream):
            epoch = row.get("epoch")
            if not epoch:
                continue
            for name, value in row.items():
                if name in ("epoch", "step") or not value:
                    continue
                number = float(value)
                if math.isfinite(number):
                    curves.setdefault(name, []).append((int(float(epoch)), number))
    return curves
