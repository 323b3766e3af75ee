"""Loading BEIR-layout retrieval datasets.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``).
Files are read line by line (:mod:`.lines`) so that corpora of millions of documents never
need a second copy in memory, and every problem in the input raises
:class:`~smec_dist.errors.SmecError` naming the file and line at fault.

Choosing anchor and validation queries from a loaded dataset is :mod:`.splits`; query-list
files are :mod:`.queries`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import SmecError
from .lines import duplicate_id_error, iter_jsonl_records, iter_tsv_rows, jsonl_id, short_repr, string_field

log = logging.getLogger(__name__)

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass
class BeirDataset:
    """A BEIR dataset held in memory.

    Attributes:
        name: The dataset folder's name.
        root: The dataset folder.
        corpus: Doc id -> ``{"title": str, "text": str}``, in file order.
        queries: Query id -> text, in file order.
        qrels: Split -> query id -> doc id -> integer relevance, in file order.
    """

    name: str
    root: Path
    corpus: dict[str, dict] = field(repr=False)
    queries: dict[str, str] = field(repr=False)
    qrels: dict[str, dict[str, dict[str, int]]] = field(repr=False)

    @property
    def splits(self) -> list[str]:
        """The qrels splits that were loaded, sorted."""
        return sorted(self.qrels)

    def doc_ids(self) -> list[str]:
        """Returns the document ids in corpus order."""
        return list(self.corpus)

    def doc_texts(self) -> list[str]:
        """Returns :func:`doc_text` of every document, in corpus order."""
        return [doc_text(doc) for doc in self.corpus.values()]


def doc_text(doc: dict) -> str:
    """Joins a document's title and text the way BEIR and sentence-transformers do.

    Args:
        doc: A corpus entry with ``title`` and ``text``.

    Returns:
        ``(title + " " + text).strip()``.
    """
    return (doc.get("title", "") + " " + doc.get("text", "")).strip()


# --------------------------------------------------------------------------- BEIR files


def load_corpus(path: Path) -> dict[str, dict]:
    """Reads a BEIR ``corpus.jsonl``.

    Args:
        path: The corpus file.

    Returns:
        Doc id -> ``{"title": str, "text": str}`` in file order; a missing title is ``""``.

    Raises:
        SmecError: On any malformed line, duplicate id, or an empty corpus.
    """
    path = Path(path)
    corpus: dict[str, dict] = {}
    empty = 0
    for lineno, doc_id, record in iter_jsonl_records(path):
        if doc_id in corpus:
            raise duplicate_id_error(path, lineno, doc_id, jsonl_id)
        title = string_field(path, lineno, record, "title", required=False)
        text = string_field(path, lineno, record, "text", required=True)
        if not title.strip() and not text.strip():
            empty += 1
        corpus[doc_id] = {"title": title, "text": text}
    if not corpus:
        raise SmecError(f"{path}: no documents (the corpus is empty)")
    if empty:
        # Real collections (Cranfield) contain such documents; they stay, since dropping
        # them would silently change the id set that qrels refer to.
        log.warning("%s: %d document(s) have an empty title and text; kept as empty strings", path, empty)
    return corpus


def read_queries_jsonl(path: Path) -> dict[str, str]:
    """Query id -> text of a BEIR-style queries ``.jsonl`` (empty when the file is).

    Raises:
        SmecError: A malformed line, a duplicate id, or an empty query text.
    """
    queries: dict[str, str] = {}
    for lineno, qid, record in iter_jsonl_records(path):
        if qid in queries:
            raise duplicate_id_error(path, lineno, qid, jsonl_id)
        text = string_field(path, lineno, record, "text", required=True)
        if not text.strip():
            # Unlike an empty document (kept: see load_corpus), an empty query has nothing to
            # retrieve with and would only add noise to the scores; .tsv query files refuse it too.
            raise SmecError(f"{path}:{lineno}: empty query text (query id {short_repr(qid)})")
        queries[qid] = text
    return queries


def load_queries(path: Path) -> dict[str, str]:
    """Reads a BEIR ``queries.jsonl``.

    Args:
        path: The queries file.

    Returns:
        Query id -> text in file order.

    Raises:
        SmecError: On any malformed line, duplicate id, empty query text, or when there are
            no queries.
    """
    path = Path(path)
    queries = read_queries_jsonl(path)
    if not queries:
        raise SmecError(f"{path}: no queries (the file is empty)")
    return queries


def load_qrels(
    path: Path,
    query_ids: dict[str, object] | None = None,
    doc_ids: dict[str, object] | None = None,
) -> dict[str, dict[str, int]]:
    """Reads one BEIR ``qrels/<split>.tsv``.

    Judgments that name a query or document absent from the dataset are counted and skipped
    with one warning naming the file (as BEIR and MTEB skip them: public releases carry a
    few); only a file with no judgment left is an error.

    Args:
        path: The qrels file.
        query_ids: When given, judgments of other query ids are skipped.
        doc_ids: When given, judgments of other doc ids are skipped.

    Returns:
        Query id -> doc id -> integer score, in file order.

    Raises:
        SmecError: Wrong header, wrong column count, non-integer score, or no judgment left.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    repeated = 0
    absent = {"query": [], "document": []}  # (line, id) of each skipped judgment
    for lineno, (qid, did, raw_score) in iter_tsv_rows(path, QRELS_HEADER, "qrels header"):
        try:
            score = int(raw_score)
        except ValueError:
            raise SmecError(f"{path}:{lineno}: score {short_repr(raw_score)} is not an integer") from None
        if query_ids is not None and qid not in query_ids:
            absent["query"].append((lineno, qid))
            continue
        if doc_ids is not None and did not in doc_ids:
            absent["document"].append((lineno, did))
            continue
        judged = qrels.setdefault(qid, {})
        if did in judged:
            repeated += 1
        judged[did] = score
    skipped = "; ".join(f"{len(rows)} name a {kind} absent from {'queries' if kind == 'query' else 'corpus'}.jsonl "
                        f"(first: line {rows[0][0]}, {short_repr(rows[0][1])})" for kind, rows in absent.items() if rows)
    if not qrels:
        raise SmecError(f"{path}: no judgment left" + (f" ({skipped})" if skipped else " after the header"))
    if skipped:
        log.warning("%s: %s: skipped, as BEIR and MTEB skip them", path, skipped)
    if repeated:
        # pytrec_eval and BEIR's own loader keep the last value too; worth a note, not a stop.
        log.warning("%s: %d repeated (query, doc) pair(s); the last score wins", path, repeated)
    return qrels


def _present_splits(qrels_dir: Path) -> list[str]:
    return sorted(p.stem for p in qrels_dir.glob("*.tsv") if p.is_file())


def load_beir(folder: str | Path, splits: Sequence[str] | None = None) -> BeirDataset:
    """Loads a BEIR-layout dataset folder.

    Args:
        folder: The folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        splits: The qrels splits to load; ``None`` loads every ``qrels/*.tsv`` present.

    Returns:
        The dataset, with qrels checked against the corpus and query ids.

    Raises:
        SmecError: A missing folder, file or split, or any malformed input.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SmecError(f"{root}: dataset folder not found")
    qrels_dir = root / "qrels"
    if not qrels_dir.is_dir():
        raise SmecError(f"{qrels_dir}: qrels folder not found")
    present = _present_splits(qrels_dir)
    if splits is None:
        if not present:
            raise SmecError(f"{qrels_dir}: no <split>.tsv files")
        wanted = present
    else:
        wanted = list(dict.fromkeys(splits))
        for split in wanted:
            if split not in present:
                raise SmecError(
                    f"{qrels_dir}: split '{split}' not found (splits present: {', '.join(present) or 'none'})"
                )
    # Check files up front so a missing qrels file is not reported after a minute of corpus
    # reading.
    for needed in (root / "corpus.jsonl", root / "queries.jsonl"):
        if not needed.is_file():
            raise SmecError(f"{needed}: file not found")
    queries = load_queries(root / "queries.jsonl")
    corpus = load_corpus(root / "corpus.jsonl")
    qrels = {split: load_qrels(qrels_dir / f"{split}.tsv", queries, corpus) for split in wanted}
    ds = BeirDataset(name=root.resolve().name, root=root, corpus=corpus, queries=queries, qrels=qrels)
    log.info(
        "loaded %s: %d docs, %d queries, %s",
        ds.name,
        len(corpus),
        len(queries),
        ", ".join(f"{s} {len(q)} q / {sum(map(len, q.values()))} judgments" for s, q in qrels.items()),
    )
    return ds
