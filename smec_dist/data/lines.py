"""Reading text and JSONL input line by line, with errors that name the file and line.

Every loader of the package (BEIR files, query lists, STS pairs, the passage store) reads
through these helpers, so that corpora of millions of documents never need a second copy in
memory, and every problem in the input raises :class:`~smec_dist.errors.SmecError` naming the
file and line at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from ..errors import SmecError


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (ending in ``...``) for error messages."""
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


def iter_tsv_rows(
    path: Path, header: tuple[str, ...], what: str = "header", got: Callable[[str], str] = short_repr
) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(line number, columns)`` of the non-blank lines after a required header line.

    The first line must hold ``header``, compared column by column (tab-separated, stripped,
    lower-cased); every later line must have as many tab-separated columns.

    Args:
        path: The file to read.
        header: The expected column names, lower case.
        what: How messages name the header (``"qrels header"``).
        got: Shows a wrong header line in the message.

    Raises:
        SmecError: A missing or wrong header, a row with another column count, or any error
            of :func:`iter_lines`; each naming the file (and line).
    """
    shown = "<TAB>".join(header)
    header_seen = False
    for lineno, line in iter_lines(path):
        if not header_seen:
            cols = tuple(c.strip().lower() for c in line.split("\t"))
            if cols != header:
                raise SmecError(f"{path}:{lineno}: {what} must be '{shown}', got {got(line)}")
            header_seen = True
            continue
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != len(header):
            raise SmecError(
                f"{path}:{lineno}: expected {len(header)} tab-separated columns ({', '.join(header)}), "
                f"got {len(cols)}"
            )
        yield lineno, cols
    if not header_seen:
        raise SmecError(f"{path}: empty file (expected header '{shown}')")


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


def jsonl_id(line: str) -> object:
    """The ``_id`` of a JSONL line (``None`` for a blank line): an ``extract`` for
    :func:`duplicate_id_error`."""
    return json.loads(line).get("_id") if line.strip() else None


def iter_jsonl_records(path: Path) -> Iterator[tuple[int, str, dict]]:
    """Yields ``(line number, _id, record)`` for each non-blank line of a BEIR jsonl file.

    Raises:
        SmecError: Malformed JSON, a line that is not an object, or a missing or empty
            ``_id`` (naming file and line).
    """
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
            raise SmecError(f"{path}:{lineno}: '_id' must be a non-empty string, got {short_repr(doc_id)}")
        yield lineno, doc_id, record


def duplicate_id_error(path: Path, lineno: int, key: str, extract: Callable[[str], object]) -> SmecError:
    """The error for an id seen again at ``lineno``, naming the line it first appeared on.

    Args:
        path: The file.
        lineno: Where the repeat is.
        key: The repeated id.
        extract: Gives a line's id (e.g. :func:`jsonl_id`), to find the first occurrence.
    """
    first = _first_line_of(path, key, extract)
    where = f"line {first}" if first is not None and first != lineno else "an earlier line"
    return SmecError(f"{path}:{lineno}: duplicate id {short_repr(key)} (first at {where})")


def string_field(path: Path, lineno: int, record: dict, key: str, required: bool) -> str:
    """``record[key]`` as a string; a missing or null optional field is ``""``.

    Raises:
        SmecError: A required field is missing, or the value is not a string.
    """
    if key not in record or record[key] is None:
        if required:
            raise SmecError(f"{path}:{lineno}: missing '{key}'")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise SmecError(f"{path}:{lineno}: '{key}' must be a string, got {type(value).__name__}")
    return value
