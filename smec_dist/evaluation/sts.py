"""Semantic textual similarity: Spearman correlation of cosine similarities with gold scores.

The figure MTEB and sentence-transformers report for STS-B (``cosine_spearman``): for each
pair, the cosine of the two sentence embeddings; Spearman's rank correlation of those cosines
with the gold 0-5 scores, times 100 in their tables, a fraction here.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from ..errors import SmecError


def cosine_spearman(emb1, emb2, scores) -> float:
    """Spearman correlation between pairwise cosines and gold scores.

    Args:
        emb1: (n, d) embeddings of the first sentences (normalised or not).
        emb2: (n, d) embeddings of the second sentences.
        scores: (n,) gold similarities.

    Returns:
        Spearman's rho in [-1, 1].

    Raises:
        SmecError: shapes disagree, fewer than 2 pairs, or the gold scores are constant.
    """
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or len(y) != len(a):
        raise SmecError(f"STS evaluation: embeddings {a.shape} and {b.shape} and {len(y)} scores do not match")
    if len(y) < 2 or np.all(y == y[0]):
        raise SmecError("STS evaluation: needs at least 2 pairs with different gold scores")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-12)  # (n,)
    return float(spearmanr(cos, y).statistic)
