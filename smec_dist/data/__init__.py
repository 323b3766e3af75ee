"""Dataset loading: BEIR retrieval folders, query files and splits, STS-B pairs, and BEIR downloads."""

from __future__ import annotations

from .beir import BeirDataset, doc_text, load_beir, load_corpus, load_qrels, load_queries
from .conventions import IdenticalIds, identical_ids, own_rows
from .download import BEIR_URL, download_beir, downloads_disabled, ensure_dataset, is_beir_folder
from .queries import load_query_file
from .splits import eval_qrels, select_anchor_queries, validation_queries
from .sts import StsPair, load_sts, load_sts_dir

__all__ = [
    "BEIR_URL",
    "BeirDataset",
    "IdenticalIds",
    "StsPair",
    "doc_text",
    "download_beir",
    "downloads_disabled",
    "ensure_dataset",
    "eval_qrels",
    "identical_ids",
    "is_beir_folder",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "load_query_file",
    "load_sts",
    "load_sts_dir",
    "own_rows",
    "select_anchor_queries",
    "validation_queries",
]
