"""Loading STS-B style sentence-pair files.

Each file is plain tab-separated text with the header ``sentence1<TAB>sentence2<TAB>score``
and a similarity score in [0, 5]. Sentences contain quote characters, so the lines are split
on tabs rather than parsed as CSV (a CSV reader would swallow text between quotes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import SmecError
from .lines import iter_tsv_rows

STS_HEADER = ("sentence1", "sentence2", "score")
STS_MIN_SCORE = 0.0
STS_MAX_SCORE = 5.0


@dataclass
class StsPair:
    """One sentence pair with its gold similarity.

    Attributes:
        s1: The first sentence.
        s2: The second sentence.
        score: Gold similarity in [0, 5].
    """

    s1: str
    s2: str
    score: float


def load_sts(path: str | Path) -> list[StsPair]:
    """Reads an STS-B ``.tsv`` file.

    Args:
        path: The file, with header ``sentence1<TAB>sentence2<TAB>score``.

    Returns:
        The pairs in file order.

    Raises:
        SmecError: A missing or empty file, a wrong header, a row without exactly three
            columns, or a score that is not a number in [0, 5]; each names file and line.
    """
    path = Path(path).expanduser()
    pairs: list[StsPair] = []
    for lineno, (s1, s2, raw) in iter_tsv_rows(path, STS_HEADER, got=lambda first: repr(first[:60])):
        try:
            score = float(raw)
        except ValueError:
            raise SmecError(f"{path}:{lineno}: score {raw[:30]!r} is not a number") from None
        # NaN passes no comparison, so check finiteness explicitly.
        if not math.isfinite(score) or not STS_MIN_SCORE <= score <= STS_MAX_SCORE:
            raise SmecError(f"{path}:{lineno}: score {raw.strip()} is outside [0, 5]")
        pairs.append(StsPair(s1, s2, score))
    if not pairs:
        raise SmecError(f"{path}: no sentence pairs after the header")
    return pairs


def load_sts_dir(folder: str | Path, split: str) -> list[StsPair]:
    """Reads ``<folder>/<split>.tsv``.

    Args:
        folder: A folder holding ``train.tsv``, ``dev.tsv``, ``test.tsv`` or some of them.
        split: The split to read.

    Returns:
        The pairs of that split.

    Raises:
        SmecError: The folder or split is absent (naming the splits present), or the file
            is malformed.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SmecError(f"{root}: STS folder not found")
    path = root / f"{split}.tsv"
    if not path.is_file():
        present = sorted(p.stem for p in root.glob("*.tsv"))
        raise SmecError(f"{root}: split '{split}' not found (splits present: {', '.join(present) or 'none'})")
    return load_sts(path)
