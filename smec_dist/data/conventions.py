"""BEIR / MTEB evaluation conventions that depend on the data.

Where a dataset's queries are also documents under the same id (ArguAna, Quora, CQADupStack),
BEIR and MTEB drop the document whose id equals the query id from every ranking
(``ignore_identical_ids=True``): otherwise each query retrieves itself. On collections with
numeric ids (Cranfield, CACM, MED, NPL) query "1" and document "1" are unrelated, and the
identical id must be kept. :func:`identical_ids` decides it from the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .beir import BeirDataset

log = logging.getLogger(__name__)

SHARE = 0.5  # auto: on when at least this share of the queries are documents under their own id


@dataclass(frozen=True)
class IdenticalIds:
    """Whether rankings drop the document whose id is the query's, and why.

    Attributes:
        ignore: drop it (BEIR/MTEB ``ignore_identical_ids=True``).
        setting: ``auto``, ``true`` or ``false`` (``data.ignore_identical_ids``).
        same: queries whose id is a document's and whose text is that document's.
        shared: queries whose id is also a document id.
        queries: all queries.
    """

    ignore: bool
    setting: str
    same: int
    shared: int
    queries: int

    def describe(self) -> str:
        return (f"ignore_identical_ids={str(self.ignore).lower()} ({self.setting}: {self.same} of {self.queries} "
                f"queries are documents under their own id with the same text; {self.shared} share an id)")


def _same_text(query: str, doc: dict) -> bool:
    q = " ".join(query.split())
    text, title = " ".join(doc.get("text", "").split()), " ".join(doc.get("title", "").split())
    return bool(q) and (q == text or q == title or q == f"{title} {text}".strip() or (len(q) >= 20 and q in text))


def identical_ids(ds: BeirDataset, setting: str | bool = "auto") -> IdenticalIds:
    """Decide ``ignore_identical_ids`` for ``ds``: ``True``/``False`` as given, or ``auto``: on
    when at least half of the queries are documents under their own id with the same text
    (ArguAna-like); off otherwise, so numeric-id collections keep their real judgments."""
    shared = [q for q in ds.queries if q in ds.corpus]
    same = sum(_same_text(ds.queries[q], ds.corpus[q]) for q in shared)
    n = len(ds.queries)
    if isinstance(setting, bool):
        return IdenticalIds(setting, str(setting).lower(), same, len(shared), n)
    return IdenticalIds(n > 0 and same >= SHARE * n, "auto", same, len(shared), n)


def own_rows(query_ids, doc_row: dict[str, int], ignore: bool) -> list[int]:
    """Per query, the corpus row of the document under its id when identical ids are ignored
    (an anchor never takes it as a sample), else -1."""
    return [doc_row.get(q, -1) if ignore else -1 for q in query_ids]
