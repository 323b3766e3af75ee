"""An on-disk passage store (SQLite) for corpora too large to hold in memory.

``PassageStore.build`` streams a BEIR ``corpus.jsonl`` into one SQLite file, validating
each line as :func:`smec_dist.data.beir.load_corpus` does; a ``PassageStore`` then answers
look-ups by id and walks the corpus in batches, holding only what is asked for in memory.

The file is written once and never changed in place: it is built under a temporary name
and renamed, and readers open it read-only (``mode=ro``) with the plain rollback journal.
WAL would buy nothing for a file nobody writes, and would need ``-wal``/``-shm`` files
beside it, which read-only folders and shared file systems do not allow.

Example:
    >>> with PassageStore.build("msmarco.sqlite", "msmarco/corpus.jsonl") as store:
    ...     print(len(store), store.texts(["7067032"]))
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import quote

from ..errors import SmecError
from ..io import atomic_path
from .beir import doc_text
from .lines import duplicate_id_error, iter_jsonl_records, jsonl_id, string_field

log = logging.getLogger(__name__)

#: Bumped when the table layout changes; a store of another version is refused.
STORE_VERSION = "1"

# SQLite's historical limit on ? parameters in one statement (newer builds allow more).
_MAX_PARAMS = 900

_SCHEMA = (
    "CREATE TABLE passages (id TEXT NOT NULL UNIQUE, title TEXT NOT NULL, text TEXT NOT NULL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class PassageStore:
    """Read-only access to a passage store written by :meth:`build`.

    Passages keep the corpus file's order (SQLite rowids). Use it as a context manager, or
    call :meth:`close`.

    Args:
        db_path: The store file.

    Raises:
        SmecError: The file is missing, not SQLite, or not a passage store of this version.
    """

    def __init__(self, db_path: str | Path):
        self.path = Path(db_path).expanduser()
        if not self.path.is_file():
            raise SmecError(f"{self.path}: passage store not found")
        try:
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"  # quoted: '?' or '#' in a path
            self._conn = sqlite3.connect(uri, uri=True)
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            raise SmecError(f"{self.path}: not a passage store ({exc})") from None
        if meta.get("version") != STORE_VERSION or "count" not in meta:
            self._conn.close()
            raise SmecError(
                f"{self.path}: passage store version {meta.get('version')!r} is not {STORE_VERSION!r}; "
                f"rebuild it with smec store build"
            )
        self._len = int(meta["count"])
        self.source = meta.get("source", "")

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, db_path: str | Path, corpus_jsonl: str | Path, batch: int = 10000) -> "PassageStore":
        """Streams a BEIR ``corpus.jsonl`` into a new store and opens it.

        Rows are inserted ``batch`` at a time into a temporary file beside ``db_path``,
        which replaces ``db_path`` (if any) only once complete: an interrupted build leaves
        the old store, or none, never a partial one.

        Args:
            db_path: The store file to write.
            corpus_jsonl: The corpus (``_id``, ``title``, ``text`` per line).
            batch: Rows per insert.

        Returns:
            The new store, open (close it, or use ``with``).

        Raises:
            SmecError: A malformed line, a missing ``_id`` or ``text``, a duplicate id
                (each naming file and line), an empty corpus, or an unwritable ``db_path``.
        """
        db_path = Path(db_path).expanduser()
        corpus_jsonl = Path(corpus_jsonl).expanduser()
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise SmecError(f"batch must be a positive integer, got {batch!r}")
        if not db_path.parent.is_dir():
            raise SmecError(f"{db_path}: output folder {db_path.parent} not found")
        if db_path.is_dir():
            raise SmecError(f"{db_path}: is a folder, not a store file")
        try:
            with atomic_path(db_path) as tmp:  # removed on any failure, renamed when complete
                tmp.unlink(missing_ok=True)  # a leftover of a killed build: SQLite would open it
                count = _fill(tmp, corpus_jsonl, batch)
        except sqlite3.Error as exc:
            raise SmecError(f"{db_path}: cannot write the store ({exc})") from None
        except OSError as exc:
            raise SmecError(f"{db_path}: cannot write the store ({exc.strerror or exc})") from None
        log.info("%s: %d passages from %s", db_path, count, corpus_jsonl)
        return cls(db_path)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self._len

    def __enter__(self) -> "PassageStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PassageStore({str(self.path)!r}, {self._len} passages)"

    def close(self) -> None:
        """Closes the connection; further calls raise."""
        self._conn.close()

    def get(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """``(title, text)`` of each id, in the order given (repeats allowed).

        Raises:
            SmecError: An id is not in the store.
        """
        ids = list(ids)
        found: dict[str, tuple[str, str]] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            marks = ",".join("?" * len(chunk))
            for pid, title, text in self._conn.execute(
                f"SELECT id, title, text FROM passages WHERE id IN ({marks})", chunk
            ):
                found[pid] = (title, text)
        for pid in ids:
            if pid not in found:
                raise SmecError(f"{self.path}: unknown passage id {pid!r}")
        return [found[pid] for pid in ids]

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids (distinct, in the order given) that are not in the store."""
        distinct = list(dict.fromkeys(ids))
        present: set[str] = set()
        for chunk in _chunks(distinct):
            marks = ",".join("?" * len(chunk))
            present.update(r[0] for r in self._conn.execute(f"SELECT id FROM passages WHERE id IN ({marks})", chunk))
        return [pid for pid in distinct if pid not in present]

    def texts(self, ids: Sequence[str]) -> list[str]:
        """Each id's ``title + " " + text``, stripped (:func:`smec_dist.data.beir.doc_text`)."""
        return [doc_text({"title": title, "text": text}) for title, text in self.get(ids)]

    def __contains__(self, pid: object) -> bool:
        return self._conn.execute("SELECT 1 FROM passages WHERE id = ?", (pid,)).fetchone() is not None

    def iter_batches(self, batch_size: int = 10000) -> Iterator[tuple[list[str], list[str]]]:
        """Yields ``(ids, texts)`` of up to ``batch_size`` passages, in corpus order.

        Each batch is its own query (keyset on the rowid), so no cursor stays open between
        batches and other look-ups may run while iterating.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SmecError(f"batch_size must be a positive integer, got {batch_size!r}")
        last = 0
        while True:
            rows = self._conn.execute(
                "SELECT rowid, id, title, text FROM passages WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (last, batch_size),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [r[1] for r in rows], [doc_text({"title": r[2], "text": r[3]}) for r in rows]

    def ids(self) -> list[str]:
        """All passage ids, in corpus order."""
        return [r[0] for r in self._conn.execute("SELECT id FROM passages ORDER BY rowid")]


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _MAX_PARAMS):
        yield ids[start:start + _MAX_PARAMS]


def _fill(tmp: Path, corpus: Path, batch: int) -> int:
    """Writes the corpus into a fresh SQLite file at ``tmp``; returns the passage count."""
    conn = sqlite3.connect(tmp)
    try:
        # The file is discarded unless complete, so a crash-safe journal is wasted work.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        for statement in _SCHEMA:
            conn.execute(statement)
        count = empty = stored = 0
        rows: list[tuple[str, str, str, int]] = []

        def flush() -> None:
            nonlocal stored
            try:
                conn.executemany("INSERT INTO passages (id, title, text) VALUES (?, ?, ?)",
                                 [r[:3] for r in rows])
            except sqlite3.IntegrityError:
                # Only UNIQUE(id) can fail: find the first repeated id of the batch, by line.
                # Part of the batch may be in the table by now (no journal, no rollback), so
                # only rows of earlier batches (rowid <= stored) count as earlier.
                seen: set[str] = set()
                for pid, _, _, lineno in rows:
                    earlier = conn.execute("SELECT 1 FROM passages WHERE id = ? AND rowid <= ?",
                                           (pid, stored)).fetchone()
                    if pid in seen or earlier:
                        raise duplicate_id_error(corpus, lineno, pid, jsonl_id) from None
                    seen.add(pid)
                raise
            stored += len(rows)
            rows.clear()

        for lineno, pid, record in iter_jsonl_records(corpus):
            title = string_field(corpus, lineno, record, "title", required=False)
            text = string_field(corpus, lineno, record, "text", required=True)
            if not title.strip() and not text.strip():
                empty += 1
            rows.append((pid, title, text, lineno))
            count += 1
            if len(rows) >= batch:
                flush()
        if rows:
            flush()
        if not count:
            raise SmecError(f"{corpus}: no documents (the corpus is empty)")
        if empty:
            log.warning("%s: %d document(s) have an empty title and text; kept as empty strings", corpus, empty)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [("version", STORE_VERSION), ("count", str(count)), ("source", str(corpus.resolve()))])
        conn.commit()
        conn.execute("PRAGMA journal_mode = DELETE")  # readers get the ordinary rollback journal
        return count
    finally:
        conn.close()


def build_store(corpus: str | Path, output: str | Path) -> str:
    """``smec store build``: builds the store ``output`` from ``corpus`` (a BEIR
    ``corpus.jsonl``) and returns the line to print."""
    with PassageStore.build(output, corpus) as store:
        return f"{store.path}: {len(store)} passages"
