"""UCR/UEA time-series classification sets, read from the files the ``aeon`` package ships (no network).

``pip install "rnnkit[datasets]"`` installs aeon; rnnkit only reads its data files (the ``.ts`` format of
the UEA archive), so aeon's own code is never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AEON_DATASETS = {
    "JapaneseVowels": "multivariate (12 LPC coefficients), variable length 7-29, 9 speakers; 270 train / 370 test",
    "GunPoint": "univariate, length 150, 2 classes (gun drawn or pointed); 50 train / 150 test",
    "ItalyPowerDemand": "univariate, length 24 (a day of demand), 2 classes (season); 67 train / 1029 test",
}


class DatasetUnavailable(RuntimeError):
    """A data set whose package is not installed; the message says what to install."""


@dataclass
class ClassificationData:
    """Sequences ``[T_i, F]`` (lengths may differ) with string labels, split as the archive splits them."""

    name: str
    train_x: list[np.ndarray]
    train_y: list[str]
    test_x: list[np.ndarray]
    test_y: list[str]


def aeon_data_directory() -> Path | None:
    """Where aeon's bundled data sets are, or None when aeon is not installed (aeon is not imported)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def read_ts(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """Read a UEA ``.ts`` file: one case per line, dimensions separated by ``:``, values by ``,``, the class
    label last. Returns sequences ``[T, F]`` and labels.

    Raises:
        ValueError: a malformed line (the message gives the line number).
    """
    sequences, labels, in_data = [], [], False
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                in_data = line.lower() == "@data"
                continue
            *dimensions, label = line.split(":")
            try:
                channels = [np.array([float(v) for v in d.split(",")]) for d in dimensions]
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: {error}") from None
            if not channels or len({len(c) for c in channels}) != 1:
                raise ValueError(f"{path}, line {number}: dimensions of different lengths")
            sequences.append(np.stack(channels, axis=1))
            labels.append(label.strip())
    if not sequences:
        raise ValueError(f"{path} has no @data section or no cases")
    return sequences, labels


def load_ucr(name: str) -> ClassificationData:
    """The official train/test split of one of :data:`AEON_DATASETS`.

    Raises:
        ValueError: an unknown name. DatasetUnavailable: aeon is not installed.
    """
    if name not in AEON_DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(AEON_DATASETS)}")
    directory = aeon_data_directory()
    if directory is None:
        raise DatasetUnavailable(f"{name} ships inside the aeon package, which is not installed: "
                                 "pip install 'rnnkit[datasets]'")
    train = read_ts(directory / name / f"{name}_TRAIN.ts")
    test = read_ts(directory / name / f"{name}_TEST.ts")
    return ClassificationData(name, train[0], train[1], test[0], test[1])


def available_datasets() -> list[tuple[str, str, str | None]]:
    """``(name, description, why not available or None)`` for every data set rnnkit knows."""
    directory = aeon_data_directory()
    rows = [("airline", "monthly airline passengers 1949-1960, 144 values (built in)", None)]
    for name, description in AEON_DATASETS.items():
        why = None
        if directory is None:
            why = "needs aeon: pip install 'rnnkit[datasets]'"
        elif not (directory / name / f"{name}_TRAIN.ts").is_file():
            why = f"not in the installed aeon ({directory})"
        rows.append((name, description, why))
    return rows
