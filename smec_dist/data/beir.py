"""Loading BEIR-layout retrieval datasets and choosing anchor queries.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``).
Files are read line by line so that corpora of millions of documents never need a second
copy in memory, and every problem in the input raises :class:`~smec_dist.errors.SmecError`
naming the file and line at fault.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import SmecError

log = logging.getLogger(__name__)

QRELS_HEADER = ("query-id", "corpus-id", "score")
ANCHOR_SPEC_FORMS = "'split:<name>', 'file:<path>', 'holdout:<fraction in (0, 1)>' or 'none'"
QUERY_FILE_SUFFIXES = (".jsonl", ".tsv", ".txt")

# Header names accepted on the first line of a two-column query .tsv; anything else on the
# first line is treated as data, because a query file without a header is just as common.
_TSV_ID_HEADERS = {"id", "_id", "qid", "query-id", "query_id", "queryid"}
_TSV_TEXT_HEADERS = {"text", "query", "question", "query-text", "query_text", "querytext"}


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


# --------------------------------------------------------------------------- line reading


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yields ``(line number, line)`` of a UTF-8 text file, one line at a time.

    Reading bytes and decoding each line on its own lets a bad byte be reported with its
    line number, and splitting only on ``\\n`` keeps characters such as U+2028, which are
    legal inside JSON strings, from breaking a record in two.

    Args:
        path: The file to read.

    Yields:
        1-based line numbers and the lines without their line ending (a BOM on the first
        line is dropped).

    Raises:
        SmecError: The file is missing or unreadable, or a line is not valid UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise SmecError(f"{path}: file not found")
    try:
        handle = open(path, "rb")
    except OSError as e:
        raise SmecError(f"{path}: cannot read ({e.strerror or e})") from None
    with handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise SmecError(
                    f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
                ) from None
            yield lineno, line.rstrip("\r\n")


def _first_line_of(path: Path, key: str, extract: Callable[[str], object]) -> int | None:
    # Only called after a duplicate is found, so a second pass is cheaper than keeping a
    # line number for every id of a possibly huge corpus.
    for lineno, line in iter_lines(path):
        try:
            if extract(line) == key:
                return lineno
        except Exception:  # noqa: BLE001 - lines already validated; any oddity just skips
            continue
    return None


def _jsonl_id(line: str) -> object:
    return json.loads(line).get("_id") if line.strip() else None


def _iter_jsonl_records(path: Path) -> Iterator[tuple[int, str, dict]]:
    """Yields ``(line number, _id, record)`` for each non-blank line of a BEIR jsonl file."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SmecError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise SmecError(
                f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
            )
        if "_id" not in record:
            raise SmecError(f"{path}:{lineno}: missing '_id'")
        doc_id = record["_id"]
        if not isinstance(doc_id, str) or not doc_id:
            raise SmecError(f"{path}:{lineno}: '_id' must be a non-empty string, got {_short(doc_id)}")
        yield lineno, doc_id, record


def _duplicate(path: Path, lineno: int, key: str, extract: Callable[[str], object]) -> SmecError:
    first = _first_line_of(path, key, extract)
    where = f"line {first}" if first is not None and first != lineno else "an earlier line"
    return SmecError(f"{path}:{lineno}: duplicate id {_short(key)} (first at {where})")


def _string_field(path: Path, lineno: int, record: dict, key: str, required: bool) -> str:
    if key not in record or record[key] is None:
        if required:
            raise SmecError(f"{path}:{lineno}: missing '{key}'")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise SmecError(f"{path}:{lineno}: '{key}' must be a string, got {type(value).__name__}")
    return value


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
    for lineno, doc_id, record in _iter_jsonl_records(path):
        if doc_id in corpus:
            raise _duplicate(path, lineno, doc_id, _jsonl_id)
        title = _string_field(path, lineno, record, "title", required=False)
        text = _string_field(path, lineno, record, "text", required=True)
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


def _load_queries_jsonl(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, qid, record in _iter_jsonl_records(path):
        if qid in queries:
            raise _duplicate(path, lineno, qid, _jsonl_id)
        text = _string_field(path, lineno, record, "text", required=True)
        if not text.strip():
            # Unlike an empty document (kept: see load_corpus), an empty query has nothing to
            # retrieve with and would only add noise to the scores; .tsv query files refuse it too.
            raise SmecError(f"{path}:{lineno}: empty query text (query id {_short(qid)})")
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
    queries = _load_queries_jsonl(path)
    if not queries:
        raise SmecError(f"{path}: no queries (the file is empty)")
    return queries


def load_qrels(
    path: Path,
    query_ids: dict[str, object] | None = None,
    doc_ids: dict[str, object] | None = None,
) -> dict[str, dict[str, int]]:
    """Reads one BEIR ``qrels/<split>.tsv``.

    Args:
        path: The qrels file.
        query_ids: When given, every query id in the file must be one of these.
        doc_ids: When given, every doc id in the file must be one of these.

    Returns:
        Query id -> doc id -> integer score, in file order.

    Raises:
        SmecError: Wrong header, wrong column count, non-integer score, unknown id, or no
            judgments at all.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    repeated = 0
    header_seen = False
    for lineno, line in iter_lines(path):
        if not header_seen:
            cols = tuple(c.strip().lower() for c in line.split("\t"))
            if cols != QRELS_HEADER:
                raise SmecError(
                    f"{path}:{lineno}: qrels header must be 'query-id<TAB>corpus-id<TAB>score', "
                    f"got {_short(line)}"
                )
            header_seen = True
            continue
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise SmecError(
                f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                f"got {len(cols)}"
            )
        qid, did, raw_score = cols
        try:
            score = int(raw_score)
        except ValueError:
            raise SmecError(f"{path}:{lineno}: score {_short(raw_score)} is not an integer") from None
        if query_ids is not None and qid not in query_ids:
            raise SmecError(f"{path}:{lineno}: query id {_short(qid)} is not in queries.jsonl")
        if doc_ids is not None and did not in doc_ids:
            raise SmecError(f"{path}:{lineno}: doc id {_short(did)} is not in corpus.jsonl")
        judged = qrels.setdefault(qid, {})
        if did in judged:
            repeated += 1
        judged[did] = score
    if not header_seen:
        raise SmecError(f"{path}: empty file (expected header 'query-id<TAB>corpus-id<TAB>score')")
    if not qrels:
        raise SmecError(f"{path}: no judgments after the header")
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


# --------------------------------------------------------------------------- query files


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
        pairs = list(_load_queries_jsonl(path).items())
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
                raise _duplicate(path, lineno, qid, lambda s: _tsv_query_id(s).strip())
            if not text:
                raise SmecError(f"{path}:{lineno}: empty query text")
            seen[qid] = text
        pairs = list(seen.items())
    else:
        pairs = [(f"line-{n}", line.strip()) for n, line in iter_lines(path) if line.strip()]
    if not pairs:
        raise SmecError(f"{path}: no queries (the file is empty)")
    return pairs


# --------------------------------------------------------------------------- anchors


def _require_split(ds: BeirDataset, split: str) -> dict[str, dict[str, int]]:
    if split not in ds.qrels:
        raise SmecError(
            f"{ds.root}: split '{split}' is not loaded (splits present: {', '.join(ds.splits) or 'none'})"
        )
    return ds.qrels[split]


def select_anchor_queries(
    ds: BeirDataset, spec: str, eval_split: str, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Chooses the anchor queries that the compressor trains against.

    Args:
        ds: The loaded dataset.
        spec: One of ``"split:<name>"`` (the queries judged in that qrels split),
            ``"file:<path>"`` (see :func:`load_query_file`), ``"holdout:<fraction>"`` (a
            seeded random fraction of the evaluation split's queries) or ``"none"``.
        eval_split: The split that will be evaluated on.
        seed: Seed for ``holdout``; the same seed gives the same queries.

    Returns:
        ``(anchor_texts, anchor_query_ids)``. Pass the ids to :func:`eval_qrels` so that
        no anchor is also scored in evaluation (required for ``holdout``).

    Raises:
        SmecError: A malformed spec, an absent split, or an unreadable query file.
    """
    text = spec.strip() if isinstance(spec, str) else ""
    kind, sep, value = text.partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if text.lower() == "none":
        return [], []
    if kind == "split" and sep and value:
        if value == eval_split:
            # Anchors drawn from the judged evaluation queries would leak into the metric.
            raise SmecError(
                f"anchor spec '{spec}': the anchor split is the evaluation split; "
                f"use 'holdout:<fraction>' to split it"
            )
        ids = list(_require_split(ds, value))
        missing = [q for q in ids if q not in ds.queries]
        if missing:
            raise SmecError(f"anchor spec '{spec}': query id {_short(missing[0])} is not in queries.jsonl")
        return [ds.queries[q] for q in ids], ids
    if kind == "file" and sep and value:
        pairs = load_query_file(value)
        return [t for _, t in pairs], [q for q, _ in pairs]
    if kind == "holdout" and sep and value:
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if not 0.0 < fraction < 1.0:
            raise SmecError(f"anchor spec '{spec}': holdout fraction must be a number in (0, 1)")
        pool = list(_require_split(ds, eval_split))
        if len(pool) < 2:
            raise SmecError(f"anchor spec '{spec}': split '{eval_split}' has too few queries to hold out")
        ids = _seeded_part(pool, fraction, seed)
        return [ds.queries[q] for q in ids], ids
    raise SmecError(f"anchor spec '{spec}' is not valid: use {ANCHOR_SPEC_FORMS}")


def _seeded_part(pool: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded random ``fraction`` of ``pool`` (at least one, never all), in pool order."""
    count = min(max(round(fraction * len(pool)), 1), len(pool) - 1)
    chosen = set(random.Random(seed).sample(pool, count))
    return [q for q in pool if q in chosen]


def validation_queries(ds: BeirDataset, split: str, fraction: float, seed: int = 0) -> list[str]:
    """Query ids held out of a judged split for validation (choosing settings off the test set).

    Args:
        ds: The loaded dataset.
        split: The judged split to hold out from (the supervised split, usually ``train``).
        fraction: The part of its queries with a positive judgment to hold out, in (0, 1).
        seed: The same seed gives the same queries.

    Returns:
        Query ids in qrels order; the caller drops them from training (anchors and judged
        pairs) and scores them.

    Raises:
        SmecError: The split is absent, or has fewer than two judged queries.
    """
    judged = [q for q, docs in _require_split(ds, split).items()
              if q in ds.queries and any(score > 0 for score in docs.values())]
    if len(judged) < 2:
        raise SmecError(f"{ds.root}: split '{split}' has {len(judged)} judged quer"
                        f"{'y' if len(judged) == 1 else 'ies'}; too few to hold some out for validation")
    return _seeded_part(judged, fraction, seed)


def eval_qrels(
    ds: BeirDataset, eval_split: str, exclude_ids: Sequence[str] | set[str] = ()
) -> dict[str, dict[str, int]]:
    """Returns the evaluation split's qrels without the excluded (anchor) queries.

    Args:
        ds: The loaded dataset.
        eval_split: The split to evaluate on.
        exclude_ids: Query ids to drop, typically the anchors from
            :func:`select_anchor_queries`.

    Returns:
        Query id -> doc id -> score, a copy, in file order.

    Raises:
        SmecError: The split is absent, or no query is left.
    """
    qrels = _require_split(ds, eval_split)
    drop = set(exclude_ids)
    kept = {q: dict(docs) for q, docs in qrels.items() if q not in drop}
    if not kept:
        raise SmecError(
            f"{ds.root}: split '{eval_split}' has no queries left after excluding {len(drop)} anchor id(s)"
        )
    return kept
