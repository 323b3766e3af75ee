"""Exact (brute-force) inner-product search with FAISS, and conversion to a run dict.

Exact search keeps the comparison between compression methods about the embeddings alone:
an approximate index would add its own, dimension-dependent, recall loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import faiss
import numpy as np

from smec_dist.errors import SmecError
from smec_dist.evaluation.metrics import evaluate_run

logger = logging.getLogger(__name__)

_GPU_CHOICES = ("auto", "yes", "no")


def gpu_available() -> bool:
    """Whether this faiss build can use a GPU (faiss-cpu builds lack the GPU symbols)."""
    if not hasattr(faiss, "get_num_gpus") or not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return int(faiss.get_num_gpus()) > 0
    except Exception:  # a broken CUDA runtime should mean "no GPU", not a crash
        logger.debug("faiss.get_num_gpus() failed", exc_info=True)
        return False


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 2-D copy/view, as faiss requires."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise SmecError(f"{name}: expected a 2-D array (n, dim), got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise SmecError(f"{name}: contains NaN or infinite values")
    return arr


def exact_search(
    docs: np.ndarray,
    queries: np.ndarray,
    k: int,
    use_gpu: str = "auto",
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents by inner product for each query.

    Args:
        docs: ``(n_docs, dim)`` document embeddings.
        queries: ``(n_queries, dim)`` query embeddings.
        k: Neighbours per query; clipped to ``n_docs``.
        use_gpu: ``"auto"`` (GPU when faiss has one), ``"yes"`` (require a GPU) or ``"no"``.
        batch_size: Queries per faiss call, bounding the ``(batch, k)`` result memory.

    Returns:
        ``(scores, indices)``: float32 and int64 arrays of shape ``(n_queries, k)``, best
        first. Ties come in faiss's order.

    Raises:
        SmecError: On a dim mismatch, empty docs, non-finite values, a bad ``k``/``use_gpu``,
            or ``use_gpu="yes"`` without a GPU-enabled faiss.
    """
    if use_gpu not in _GPU_CHOICES:
        raise SmecError(f"use_gpu: expected one of {', '.join(_GPU_CHOICES)}, got {use_gpu!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SmecError(f"k: expected a positive integer, got {k!r}")
    if batch_size < 1:
        raise SmecError(f"batch_size: expected a positive integer, got {batch_size!r}")
    xb = _as_matrix(docs, "docs")
    xq = _as_matrix(queries, "queries")
    if xb.shape[1] != xq.shape[1]:
        raise SmecError(
            f"dimension mismatch: docs have dim {xb.shape[1]} but queries have dim {xq.shape[1]}"
        )
    if xb.shape[0] == 0:
        raise SmecError("docs: no documents to search")
    k = min(int(k), xb.shape[0])
    nq = xq.shape[0]

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    resources = None  # must outlive the GPU index, hence kept in this scope
    on_gpu = use_gpu != "no" and gpu_available()
    if use_gpu == "yes" and not on_gpu:
        raise SmecError("use_gpu: 'yes' but this faiss build has no usable GPU (use 'auto' or 'no')")
    if on_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    # The GPU flat index caps k at 2048; beyond that the CPU index is the safe choice.
    if on_gpu and k > 2048:
        logger.info("k=%d exceeds the faiss GPU limit; searching on CPU", k)
        index = faiss.index_gpu_to_cpu(index)
        on_gpu = False
    logger.debug("exact search: %d docs x %d queries, dim %d, k %d, %s",
                 xb.shape[0], nq, xb.shape[1], k, "GPU" if on_gpu else "CPU")

    scores = np.empty((nq, k), dtype=np.float32)
    indices = np.empty((nq, k), dtype=np.int64)
    for start in range(0, nq, batch_size):
        stop = min(start + batch_size, nq)
        d, i = index.search(xq[start:stop], k)
        scores[start:stop] = d
        indices[start:stop] = i
    del index, resources
    return scores, indices


def to_run(
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    scores: np.ndarray,
    indices: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Turn search output into a run ``{query_id: {doc_id: score}}``.

    Args:
        query_ids: One id per row of ``scores``/``indices``.
        doc_ids: Maps a doc index (column value of ``indices``) to its id.
        scores: ``(n_queries, k)`` scores.
        indices: ``(n_queries, k)`` doc indices; ``-1`` (faiss's "no result") is skipped.

    Returns:
        The run, each query's docs in the given (best-first) order.

    Raises:
        SmecError: If the shapes and id lists disagree or an index is out of range.
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    if scores.shape != indices.shape or scores.ndim != 2:
        raise SmecError(
            f"to_run: scores shape {scores.shape} and indices shape {indices.shape} differ or are not 2-D"
        )
    if len(query_ids) != scores.shape[0]:
        raise SmecError(f"to_run: {len(query_ids)} query ids for {scores.shape[0]} result rows")
    if indices.size and int(indices.max()) >= len(doc_ids):
        raise SmecError(f"to_run: doc index {int(indices.max())} out of range for {len(doc_ids)} doc ids")
    run: dict[str, dict[str, float]] = {}
    for qid, row_scores, row_idx in zip(query_ids, scores.tolist(), indices.tolist()):
        run[str(qid)] = {
            str(doc_ids[j]): float(s) for s, j in zip(row_scores, row_idx) if j >= 0
        }
    return run


def search_run(
    docs: np.ndarray,
    doc_ids: Sequence[str],
    queries: np.ndarray,
    query_ids: Sequence[str],
    k: int = 100,
    use_gpu: str = "auto",
) -> dict[str, dict[str, float]]:
    """Exact inner-product search straight to a run dict.

    Args:
        docs: ``(n_docs, dim)`` document embeddings, row i is ``doc_ids[i]``.
        doc_ids: Document ids.
        queries: ``(n_queries, dim)`` query embeddings, row i is ``query_ids[i]``.
        query_ids: Query ids.
        k: Docs kept per query (clipped to ``n_docs``).
        use_gpu: As for :func:`exact_search`.

    Returns:
        ``{query_id: {doc_id: score}}``.

    Raises:
        SmecError: If ids and embedding rows disagree in number, or as :func:`exact_search`.
    """
    if len(doc_ids) != len(docs):
        raise SmecError(f"doc_ids: {len(doc_ids)} ids for {len(docs)} document embeddings")
    if len(query_ids) != len(queries):
        raise SmecError(f"query_ids: {len(query_ids)} ids for {len(queries)} query embeddings")
    scores, indices = exact_search(docs, queries, k, use_gpu=use_gpu)
    return to_run(query_ids, doc_ids, scores, indices)


def drop_identical(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """A run without the document whose id is the query's, as BEIR and MTEB remove it after
    search when a task sets ``ignore_identical_ids`` (see :mod:`smec_dist.data.conventions`)."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def search_metrics(
    docs: np.ndarray,
    doc_ids: Sequence[str],
    queries: np.ndarray,
    query_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    k: int = 100,
    k_values: Sequence[int] = (10, 100),
    use_gpu: str = "auto",
    efficiency: bool = False,
    ignore_identical_ids: bool = False,
) -> dict[str, float]:
    """Exact search, then the BEIR metric suite: the one "search + metrics" of the project.

    Args:
        docs / doc_ids / queries / query_ids: as for :func:`search_run`.
        qrels: ``{query_id: {doc_id: relevance}}``.
        k: documents kept per query (at least ``max(k_values)``).
        k_values: cut-offs of the metrics (:func:`smec_dist.evaluation.metrics.evaluate_run`).
        efficiency: also report ``bytes/doc`` (of the index, in ``docs``' dtype) and
            ``ms/query`` (the search alone).
        ignore_identical_ids: drop the document whose id is the query's from each ranking
            after the search (:func:`drop_identical`).
    """
    if len(doc_ids) != len(docs):
        raise SmecError(f"doc_ids: {len(doc_ids)} ids for {len(docs)} document embeddings")
    if len(query_ids) != len(queries):
        raise SmecError(f"query_ids: {len(query_ids)} ids for {len(queries)} query embeddings")
    t = time.perf_counter()
    scores, indices = exact_search(docs, queries, k, use_gpu=use_gpu)
    seconds = time.perf_counter() - t
    run = to_run(query_ids, doc_ids, scores, indices)
    metrics = evaluate_run(qrels, drop_identical(run) if ignore_identical_ids else run, k_values)
    if efficiency:
        docs = np.asarray(docs)
        metrics["bytes/doc"] = float(docs.shape[1] * docs.dtype.itemsize)
        metrics["ms/query"] = 1000.0 * seconds / max(1, len(queries))
    return metrics
