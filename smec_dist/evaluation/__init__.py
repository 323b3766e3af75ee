"""Evaluation: exact dense search, the BM25 baseline and BEIR-style retrieval metrics."""

from __future__ import annotations

from smec_dist.evaluation.bm25 import bm25_name, bm25_run, stemmer_name
from smec_dist.evaluation.metrics import HEADLINE, evaluate_run, metric_names, per_query
from smec_dist.evaluation.search import exact_search, gpu_available, search_metrics, search_run, to_run

__all__ = [
    "HEADLINE",
    "bm25_name",
    "bm25_run",
    "evaluate_run",
    "exact_search",
    "gpu_available",
    "metric_names",
    "per_query",
    "search_metrics",
    "search_run",
    "stemmer_name",
    "to_run",
]
