"""Dataset loading: BEIR retrieval folders, query files and splits, STS-B pairs, and BEIR downloads."""

from __future__ import annotations

from .beir import BeirDataset, doc_text, load_beir, load_corpus, load_qrels, load_queries
from .download import BEIR_URL, download_beir, downloads_disabled, ensure_dataset, is_beir_folder
from .queries import load_query_file
from .splits import eval_qrels, select_anchor_queries, validation_queries
from .sts import StsPair, load_sts, load_sts_dir

__all__ = [
    "BEIR_URL",
    "BeirDataset",
    "StsPair",
    "doc_text",
    "download_beir",
    "downloads_disabled",
    "ensure_dataset",
    "eval_qrels",
    "is_beir_folder",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "load_query_file",
    "load_sts",
    "load_sts_dir",
    "select_anchor_queries",
    "validation_queries",
]
