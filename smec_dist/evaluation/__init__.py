"""Evaluation: exact dense search, the BM25 baseline and BEIR-style retrieval metrics."""

from __future__ import annotations

from smec_dist.evaluation.bm25 import STEMMERS, bm25_name, bm25_run
from smec_dist.evaluation.metrics import HEADLINE, evaluate_run, metric_names, per_query
from smec_dist.evaluation.search import drop_identical, exact_search, gpu_available, search_metrics, search_run, to_run

__all__ = [
    "HEADLINE",
    "STEMMERS",
    "bm25_name",
    "bm25_run",
    "drop_identical",
    "evaluate_run",
    "exact_search",
    "gpu_available",
    "metric_names",
    "per_query",
    "search_metrics",
    "search_run",
    "to_run",
]
