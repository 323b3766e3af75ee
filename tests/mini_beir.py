"""A small real BEIR folder cut from SciFact, for end-to-end tests (seconds, not minutes)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

SCIFACT = Path(os.environ.get("SMEC_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) / "scifact"


def mini_data_dir(tmp_path_factory, **sizes) -> Path:
    """A data folder holding ``mini`` (see :func:`make_mini_beir`), cut from the shared SciFact."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.fail(f"{SCIFACT} not found: set SMEC_DATA_DIR")
    root = tmp_path_factory.mktemp("data")
    make_mini_beir(SCIFACT, root / "mini", **sizes)
    return root


def make_mini_beir(src: Path, dst: Path, n_queries: int = 32, n_extra_docs: int = 64, max_chars: int = 300) -> Path:
    """Write ``dst`` with the first ``n_queries`` train queries of ``src`` that have
    judgments, their judged documents plus ``n_extra_docs`` others (texts cut to
    ``max_chars``), and train/test qrels (test: the same pairs, for a quick eval)."""
    dst.mkdir(parents=True, exist_ok=True)
    with open(src / "qrels" / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    qrels: dict[str, list[str]] = {}
    for qid, did, score in rows:
        if int(score) > 0 and (qid in qrels or len(qrels) < n_queries):
            qrels.setdefault(qid, []).append(did)
    wanted = {d for ds in qrels.values() for d in ds}
    docs, extra = [], 0
    with open(src / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["_id"] in wanted or extra < n_extra_docs:
                extra += doc["_id"] not in wanted
                doc["text"] = doc["text"][:max_chars]
                docs.append(doc)
    queries = []
    with open(src / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            if q["_id"] in qrels:
                queries.append(q)
    (dst / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (dst / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (dst / "qrels").mkdir(exist_ok=True)
    for split in ("train", "test"):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, ds in qrels.items() for d in ds]
        (dst / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst
