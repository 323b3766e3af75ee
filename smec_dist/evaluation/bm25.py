"""BM25 baseline with the bm25s library.

The sparse baseline puts the dense numbers in context: a compressed embedding that falls
below BM25 has lost what made dense retrieval worth its cost.

Scoring is done per query with :meth:`bm25s.BM25.get_scores` and our own top-k selection,
rather than :meth:`bm25s.BM25.retrieve`, so that ties are broken by doc id (the order
:mod:`smec_dist.evaluation.metrics` also uses) and the result never depends on a
selection backend or thread count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from smec_dist.errors import SmecError

logger = logging.getLogger(__name__)


STEMMERS = ("none", "english")


def _stemmer(name: str) -> object | None:
    """The stemmer ``name`` names: ``none``, or ``english`` (PyStemmer's Snowball stemmer). The
    choice is explicit, never "whatever is installed", so BM25 scores do not depend on the
    environment; it is recorded with the results."""
    if name not in STEMMERS:
        raise SmecError(f"bm25 stemmer: '{name}' is not one of {', '.join(STEMMERS)}")
    if name == "none":
        return None
    try:
        import Stemmer  # type: ignore[import-not-found]  # PyStemmer
    except ImportError as exc:
        raise SmecError("bm25 stemmer 'english' needs PyStemmer: pip install PyStemmer") from exc
    return Stemmer.Stemmer("english")


def bm25_name(k1: float = 1.2, b: float = 0.75, stemmer: str = "none", stopwords: str | None = "en") -> str:
    """Label of the baseline as it runs, for reports, logs and results.json.

    Returns:
        E.g. ``"BM25 (bm25s, k1=1.2, b=0.75, stemmer=none, stopwords=en)"``.
    """
    return f"BM25 (bm25s, k1={k1:g}, b={b:g}, stemmer={stemmer}, stopwords={stopwords or 'none'})"


def _check_ids(ids: Sequence[str], texts: Sequence[str], what: str) -> None:
    if len(ids) != len(texts):
        raise SmecError(f"{what}_ids: {len(ids)} ids but {len(texts)} {what} texts")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise SmecError(f"{what}_ids: duplicate id {i!r}")
        seen.add(i)


def _bm25s():
    """Import bm25s, quieting the DEBUG level it gives its own logger on import."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _tokenize(texts: Sequence[str], stopwords: str | None, stemmer: object) -> list[list[str]]:
    """Token strings per text (strings, not ids, so corpus and queries share one vocabulary)."""
    bm25s = _bm25s()

    try:
        tokens = bm25s.tokenize(
            [t if isinstance(t, str) else "" for t in texts],
            stopwords=stopwords,
            stemmer=stemmer,
            return_ids=False,
            show_progress=False,
        )
    except ValueError as exc:  # bm25s rejects unknown stopword languages this way
        raise SmecError(f"stopwords: {exc}") from None
    return [list(t) for t in tokens]


def _top_k(scores: np.ndarray, k: int, doc_ids: Sequence[str]) -> list[int]:
    """Indices of the k best positive scores, ties by doc id, fully deterministic."""
    positive = np.flatnonzero(scores > 0)  # zero = no query term matched; BEIR's ES omits those
    if positive.size > k:
        # Keep every doc tied with the k-th score so the tie-break below sees all of them.
        kth = np.partition(scores[positive], positive.size - k)[positive.size - k]
        positive = positive[scores[positive] >= kth]
    order = sorted(positive.tolist(), key=lambda j: (-float(scores[j]), doc_ids[j]))
    return order[:k]


def bm25_run(
    doc_ids: list[str],
    doc_texts: list[str],
    query_ids: list[str],
    query_texts: list[str],
    k: int = 100,
    k1: float = 1.2,
    b: float = 0.75,
    stopwords: str | None = "en",
    stemmer: str = "none",
) -> dict[str, dict[str, float]]:
    """Retrieve the top-k documents per query with BM25 (Lucene variant, via bm25s).

    Documents with no tokens left after tokenisation (empty text, only stopwords) are left
    out of the index; they could not match anyway and bm25s handles them poorly. Only
    documents sharing at least one term with the query (score > 0) are returned. The run's
    settings are logged at INFO and named by :func:`bm25_name`.

    Args:
        doc_ids: Document ids, parallel to ``doc_texts`` (e.g. title + " " + text).
        doc_texts: Document texts.
        query_ids: Query ids, parallel to ``query_texts``.
        query_texts: Query texts.
        k: Documents kept per query.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        stopwords: A bm25s stopword language (``"en"``, ...) or ``None`` for none.
        stemmer: ``"none"`` or ``"english"`` (:data:`STEMMERS`).

    Returns:
        ``{query_id: {doc_id: score}}`` with every query id present (possibly empty).

    Raises:
        SmecError: On mismatched or duplicate ids, ``k < 1``, an unknown stopword language,
            or a corpus in which no document has any token.
    """
    bm25s = _bm25s()

    _check_ids(doc_ids, doc_texts, "doc")
    _check_ids(query_ids, query_texts, "query")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SmecError(f"k: expected a positive integer, got {k!r}")

    stemmer_name = stemmer
    stemmer = _stemmer(stemmer)
    logger.info("%s", bm25_name(k1, b, stemmer_name, stopwords))

    doc_tokens = _tokenize(doc_texts, stopwords, stemmer)
    kept = [i for i, toks in enumerate(doc_tokens) if toks]
    if not kept:
        raise SmecError(f"doc_texts: all {len(doc_texts)} documents are empty after tokenisation")
    if len(kept) < len(doc_tokens):
        logger.info("bm25: skipping %d empty documents", len(doc_tokens) - len(kept))
    kept_ids = [doc_ids[i] for i in kept]

    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index([doc_tokens[i] for i in kept], show_progress=False)

    run: dict[str, dict[str, float]] = {}
    empty_queries = 0
    for qid, q_tokens in zip(query_ids, _tokenize(query_texts, stopwords, stemmer)):
        known = [t for t in q_tokens if t in retriever.vocab_dict]
        if not known:
            empty_queries += 1
            run[qid] = {}
            continue
        scores = np.asarray(retriever.get_scores(known), dtype=np.float64)
        run[qid] = {kept_ids[j]: float(scores[j]) for j in _top_k(scores, k, kept_ids)}
    if empty_queries:
        logger.info("bm25: %d queries share no term with the corpus", empty_queries)
    return run
