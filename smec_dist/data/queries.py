"""Query-list files: the queries to embed or anchor on, in ``.jsonl``, ``.tsv`` or ``.txt``.

Used by ``run.anchor_queries: file:<path>`` (:func:`smec_dist.data.splits.select_anchor_queries`)
and wherever a plain list of query texts is read; errors name the file and line.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SmecError
from .beir import read_queries_jsonl
from .lines import duplicate_id_error, iter_lines

QUERY_FILE_SUFFIXES = (".jsonl", ".tsv", ".txt")

# Header names accepted on the first line of a two-column query .tsv; anything else on the
# first line is treated as data, because a query file without a header is just as common.
_TSV_ID_HEADERS = {"id", "_id", "qid", "query-id", "query_id", "queryid"}
_TSV_TEXT_HEADERS = {"text", "query", "question", "query-text", "query_text", "querytext"}


def _tsv_query_id(line: str) -> object:
    return line.split("\t")[0] if line.strip() else None


def load_query_file(path: str | Path) -> list[tuple[str, str]]:
    """Reads a file of query texts.

    Three formats, chosen by suffix: ``.jsonl`` with ``_id`` and ``text`` per line; ``.tsv``
    with ``id<TAB>text`` per line and an optional header (``id``/``_id``/``qid``/
    ``query-id`` then ``text``/``query``/``question``); ``.txt`` with one text per line,
    whose ids are ``line-N`` (N the 1-based line number). Blank lines are skipped.

    Args:
        path: The query file.

    Returns:
        ``(id, text)`` pairs in file order.

    Raises:
        SmecError: Unknown suffix, missing file, malformed line, duplicate id, or no queries.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in QUERY_FILE_SUFFIXES:
        raise SmecError(
            f"{path}: unknown query file type '{path.suffix}' (use {', '.join(QUERY_FILE_SUFFIXES)})"
        )
    if suffix == ".jsonl":
        pairs = list(read_queries_jsonl(path).items())
    elif suffix == ".tsv":
        seen: dict[str, str] = {}
        for lineno, line in iter_lines(path):
            if not line.strip():
                continue
            cols = line.split("\t")
            if lineno == 1 and len(cols) == 2:
                head = (cols[0].strip().lower(), cols[1].strip().lower())
                if head[0] in _TSV_ID_HEADERS and head[1] in _TSV_TEXT_HEADERS:
                    continue
            if len(cols) != 2:
                raise SmecError(f"{path}:{lineno}: expected 2 tab-separated columns (id, text), got {len(cols)}")
            qid, text = cols[0].strip(), cols[1].strip()
            if not qid:
                raise SmecError(f"{path}:{lineno}: empty query id")
            if qid in seen:
                raise duplicate_id_error(path, lineno, qid, lambda s: _tsv_query_id(s).strip())
            if not text:
                raise SmecError(f"{path}:{lineno}: empty query text")
            seen[qid] = text
        pairs = list(seen.items())
    else:
        pairs = [(f"line-{n}", line.strip()) for n, line in iter_lines(path) if line.strip()]
    if not pairs:
        raise SmecError(f"{path}: no queries (the file is empty)")
    return pairs
