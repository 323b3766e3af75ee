"""Preparing Wikipedia passages and positive pairs for unsupervised training.

The command reads the real public files, skips and counts bad rows, and writes its output
into a temporary folder beside ``out_dir`` that is renamed into place only when complete
(:func:`smec_dist.data.files.staging`), so an interrupted run never leaves a folder that a
later run would trust.

:func:`prepare_wikipedia` reads one of: a Hugging Face ``wikimedia/wikipedia``
parquet shard (columns ``id``, ``url``, ``title``, ``text``) or a folder of them; JSONL with
``id``, ``title``, ``text`` (WikiExtractor's ``--json`` output); or a MediaWiki
pages-articles XML dump (``.xml`` or ``.xml.bz2``), streamed and cleaned of wikitext markup. It
drops redirects, disambiguation pages, pages outside the article namespace and articles shorter
than ``min_words``, cuts the rest into passages of ``min_words`` to ``max_words`` words at
sentence and paragraph boundaries (a sentence longer than a passage is cut between words), and
writes:

    corpus.jsonl   {"_id": "<article id>-<n>", "title", "text"}, n from 0 within an article
    pairs.jsonl    positive pairs for unsupervised training, shuffled with the seed:
                   {"kind": "title", "anchor": title, "positive": passage, "anchor_id": article id,
                    "positive_id": passage id} for every passage (the article's first sentence
                    stands in for an empty title), and {"kind": "adjacent", "anchor": passage n,
                    "positive": passage n+1, ...ids} for consecutive passages of one article
    prepare.json   settings and counts: articles read, kept, skipped by reason, bad rows by file,
                   passages written, short tails dropped, pairs written by kind

Words are whitespace-separated tokens, except that each Chinese or Japanese character counts as
one word; cleaning and cutting the text is :mod:`.wikitext`. Downloads (``download=True``) are
refused when ``HF_HUB_OFFLINE`` or ``SMEC_OFFLINE`` is set; any URL may be a ``file://`` URL.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlparse
from xml.etree import ElementTree

from ..errors import SmecError
from .download import fetch
from .files import (FileTally, check_source, download_file, open_binary, progress_bar, short, staging, tallied_lines,
                    write_json)
from .wikitext import (clean_wikitext, count_words, is_disambiguation, is_redirect, plain_paragraphs, sentences,
                       split_passages)

log = logging.getLogger(__name__)

WIKI_TREE_URL = "https://huggingface.co/api/datasets/wikimedia/wikipedia/tree/main/{dump_date}.{lang}"
WIKI_FILE_URL = "https://huggingface.co/datasets/wikimedia/wikipedia/resolve/main/{path}"
WIKI_COLUMNS = ("id", "title", "text")

_SHUFFLE_BUFFER = 10_000  # pairs held at once while shuffling pairs.jsonl
_NS_RE = re.compile(r"^-?[0-9]+$")


@dataclass
class _Article:
    where: int  # line, row or page number, for messages
    id: str
    title: str
    text: str
    wikitext: bool
    redirect: bool = False
    namespace: int = 0


def _wiki_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "parquet-folder"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.bz2", ".json", ".json.gz", ".json.bz2")):
        return "jsonl"
    if name.endswith((".xml", ".xml.bz2", ".xml.gz")):
        return "xml"
    raise SmecError(f"{path}: unknown Wikipedia file type (use .parquet, .jsonl[.gz|.bz2], .xml or .xml.bz2, "
                    f"or a folder of .parquet shards)")


def _article_id(value: object) -> str | None:
    """An article id as a stripped string (an integer id too); None when it is no usable id."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _read_jsonl_articles(path: Path, tally: FileTally, progress: bool) -> Iterator[_Article]:
    for lineno, line in tallied_lines(path, tally, progress):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            tally.skip(lineno, "malformed JSON", f"malformed JSON ({e.msg})")
            continue
        if not isinstance(record, dict):
            tally.skip(lineno, "not an object", f"expected a JSON object, got {type(record).__name__}")
            continue
        raw_id = record.get("id", record.get("_id"))
        article_id, title, text = _article_id(raw_id), record.get("title", ""), record.get("text")
        if article_id is None:
            tally.skip(lineno, "bad id", f"'id' must be a non-empty string or integer, got {short(raw_id)}")
        elif not isinstance(text, str):
            tally.skip(lineno, "bad text", f"'text' must be a string, got {type(text).__name__}")
        elif title is not None and not isinstance(title, str):
            tally.skip(lineno, "bad title", f"'title' must be a string, got {type(title).__name__}")
        else:
            yield _Article(lineno, article_id, title or "", text, wikitext=False)


def _read_parquet_articles(path: Path, tally: FileTally, progress: bool) -> Iterator[_Article]:
    import pyarrow.parquet as pq

    try:
        shard = pq.ParquetFile(path)
        names = set(shard.schema_arrow.names)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a non-parquet file
        raise SmecError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in WIKI_COLUMNS if c not in names]
    if missing:
        raise SmecError(f"{path}: parquet file lacks column(s) {', '.join(missing)} "
                        f"(expected the wikimedia/wikipedia columns id, url, title, text)")
    row = 0
    try:
        batches = shard.iter_batches(batch_size=256, columns=list(WIKI_COLUMNS))
        for batch in progress_bar(batches, path.name, progress, unit=" batches",
                                  total=math.ceil(shard.metadata.num_rows / 256)):
            for record in batch.to_pylist():
                row += 1
                tally.read += 1
                raw_id, title, text = (record[c] for c in WIKI_COLUMNS)
                article_id = _article_id(raw_id)
                if article_id is None:
                    tally.skip(row, "bad id", f"'id' must be a non-empty string, got {short(raw_id)}")
                elif not isinstance(text, str):
                    tally.skip(row, "bad text", f"'text' must be a string, got {short(text)}")
                else:
                    yield _Article(row, article_id, title if isinstance(title, str) else "", text, wikitext=False)
    except OSError as e:  # pyarrow.ArrowIOError and friends: a damaged shard
        raise SmecError(f"{path}: cannot read row {row + 1} ({e})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _read_xml_articles(path: Path, tally: FileTally, progress: bool) -> Iterator[_Article]:
    """Streams ``<page>`` elements of a MediaWiki export, freeing each once read."""
    handle = open_binary(path)
    page = 0
    try:
        with handle:
            root = None
            elements = ElementTree.iterparse(handle, events=("start", "end"))
            for event, elem in progress_bar(elements, path.name, progress, unit=" elements"):
                if root is None:
                    root = elem
                if event != "end" or _local(elem.tag) != "page":
                    continue
                page += 1
                tally.read += 1
                fields = {_local(child.tag): child for child in elem}
                title = (fields["title"].text or "") if "title" in fields else None
                article_id = (fields["id"].text or "").strip() if "id" in fields else ""
                ns = (fields["ns"].text or "0").strip() if "ns" in fields else "0"
                revision = fields.get("revision")
                text_elem = None
                if revision is not None:
                    text_elem = next((c for c in revision if _local(c.tag) == "text"), None)
                if title is None or not article_id:
                    tally.skip(page, "bad page", f"page without {'title' if title is None else 'id'}")
                elif text_elem is None:
                    tally.skip(page, "bad page", f"page {short(title)} has no revision text")
                else:
                    yield _Article(page, article_id, title, text_elem.text or "", wikitext=True,
                                   redirect="redirect" in fields,
                                   namespace=int(ns) if _NS_RE.match(ns) else -1)
                elem.clear()
                root.clear()  # drops the finished pages the root still holds
    except ElementTree.ParseError as e:
        line, column = e.position
        raise SmecError(f"{path}:{line}: malformed XML at column {column} ({e})") from None
    except (OSError, EOFError, zlib.error) as e:
        raise SmecError(f"{path}: cannot read to the end ({e})") from None


@dataclass
class _WikiWriter:
    """Turns articles into passages and pairs, writing as it goes."""

    out: Path
    min_words: int
    max_words: int
    num_passages: int | None
    pairs: bool
    seed: int
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    passages: int = 0
    tails_dropped: int = 0
    pair_counts: dict[str, int] = field(default_factory=lambda: {"title": 0, "adjacent": 0})
    seen_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._corpus = open(self.out / "corpus.jsonl", "w", encoding="utf-8")
        self._pairs = open(self.out / "pairs.jsonl", "w", encoding="utf-8") if self.pairs else None
        self._buffer: list[str] = []
        self._rng = random.Random(f"wikipedia-pairs-{self.seed}")

    @property
    def full(self) -> bool:
        return self.num_passages is not None and self.passages >= self.num_passages

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _pair(self, row: dict) -> None:
        # A bounded shuffle buffer: pairs of one article spread apart, in constant memory.
        self.pair_counts[row["kind"]] += 1
        self._buffer.append(json.dumps(row, ensure_ascii=False) + "\n")
        if len(self._buffer) >= _SHUFFLE_BUFFER:
            i = self._rng.randrange(len(self._buffer))
            self._buffer[i], self._buffer[-1] = self._buffer[-1], self._buffer[i]
            self._pairs.write(self._buffer.pop())

    def add(self, article: _Article, tally: FileTally) -> None:
        """Writes an article's passages and pairs, or counts why it was skipped."""
        self.read += 1
        if article.id in self.seen_ids:
            self._skip("duplicate_id")
            tally.skip(article.where, "duplicate id", f"duplicate article id {short(article.id)} (the first is kept)")
            return
        self.seen_ids.add(article.id)
        reason, chunks, paragraphs = None, [], []
        if article.namespace != 0:
            reason = "not_article"
        elif is_redirect(article.text, article.redirect):
            reason = "redirect"
        elif is_disambiguation(article.title, article.text, article.wikitext):
            reason = "disambiguation"
        else:
            paragraphs = clean_wikitext(article.text) if article.wikitext else plain_paragraphs(article.text)
            if sum(count_words(p) for p in paragraphs) >= self.min_words:
                chunks, dropped = split_passages(paragraphs, self.min_words, self.max_words)
                self.tails_dropped += dropped
            if not chunks:
                reason = "too_short"
        if reason is not None:
            self._skip(reason)
            return
        tally.kept += 1
        self.kept += 1
        title = " ".join(article.title.split())
        anchor = title or sentences(paragraphs[0])[0]
        if self.num_passages is not None:
            chunks = chunks[: self.num_passages - self.passages]
        ids = [f"{article.id}-{n}" for n in range(len(chunks))]
        for pid, text in zip(ids, chunks):
            self._corpus.write(json.dumps({"_id": pid, "title": title, "text": text}, ensure_ascii=False) + "\n")
        self.passages += len(chunks)
        if self._pairs is None:
            return
        for pid, text in zip(ids, chunks):
            self._pair({"kind": "title", "anchor": anchor, "positive": text, "anchor_id": article.id,
                        "positive_id": pid})
        for i in range(len(chunks) - 1):
            self._pair({"kind": "adjacent", "anchor": chunks[i], "positive": chunks[i + 1], "anchor_id": ids[i],
                        "positive_id": ids[i + 1]})

    def close(self) -> None:
        if self._pairs is not None:
            self._rng.shuffle(self._buffer)
            self._pairs.writelines(self._buffer)
            self._pairs.close()
        self._corpus.close()


def _wiki_sources(source: Path) -> list[Path]:
    if source.is_dir():
        shards = sorted(source.glob("*.parquet"))
        if not shards:
            raise SmecError(f"{source}: folder holds no .parquet shards")
        return shards
    return [source]


def _read_articles(path: Path, tally: FileTally, progress: bool) -> Iterator[_Article]:
    kind = _wiki_format(path)
    if kind == "parquet":
        return _read_parquet_articles(path, tally, progress)
    if kind == "jsonl":
        return _read_jsonl_articles(path, tally, progress)
    return _read_xml_articles(path, tally, progress)


def _hf_shard_urls(lang: str, dump_date: str, progress: bool, folder: Path) -> list[str]:
    """Lists the parquet shards of ``wikimedia/wikipedia`` for one language and dump date."""
    tree_url = WIKI_TREE_URL.format(lang=lang, dump_date=dump_date)
    listing = folder / "tree.json"
    fetch(tree_url, listing, "file list", progress)
    try:
        entries = json.loads(listing.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SmecError(f"{tree_url}: not a JSON file list ({e})") from None
    finally:
        listing.unlink(missing_ok=True)
    paths = sorted(e["path"] for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)
                   and e["path"].endswith(".parquet")) if isinstance(entries, list) else []
    if not paths:
        raise SmecError(f"{tree_url}: no parquet shards listed for {dump_date}.{lang} "
                        f"(check --lang and --dump-date, or give --url)")
    return [WIKI_FILE_URL.format(path=p) for p in paths]


def _check_wiki_args(lang, dump_date, num_passages, min_words, max_words) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", lang or ""):
        raise SmecError(f"lang {lang!r} is not a Wikipedia language code such as 'en' or 'de'")
    if not re.fullmatch(r"[0-9]{8}", dump_date or ""):
        raise SmecError(f"dump_date {dump_date!r} is not a date like 20231101")
    if num_passages is not None and num_passages < 1:
        raise SmecError(f"num_passages must be 1 or more (or None for all), got {num_passages}")
    if min_words < 1 or max_words < min_words:
        raise SmecError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")


def prepare_wikipedia(
    out_dir: str | Path,
    source: str | Path | None = None,
    *,
    lang: str = "en",
    dump_date: str = "20231101",
    download: bool = False,
    url: str | None = None,
    num_passages: int | None = 100_000,
    min_words: int = 32,
    max_words: int = 128,
    pairs: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Builds a Wikipedia passage corpus and positive pairs for unsupervised training (the files
    written: see the module docstring).

    Args:
        out_dir: The folder to create; it must not exist, or be empty.
        source: A parquet shard (or a folder of them), a JSONL file, or an XML dump.
        lang: Wikipedia language code, for the download.
        dump_date: ``wikimedia/wikipedia`` dump date (``YYYYMMDD``), for the download.
        download: Fetch instead: ``url`` when given, else the ``wikimedia/wikipedia`` parquet
            shards of ``dump_date.lang``, one at a time until ``num_passages`` is reached; each
            is deleted once read.
        url: The file to download (any of the source formats, by its name).
        num_passages: Stop after this many passages (articles in source order); None for all.
        min_words: The fewest words in a passage; shorter articles are skipped.
        max_words: The most words in a passage.
        pairs: Write ``pairs.jsonl``.
        seed: Seeds the order of ``pairs.jsonl``.
        progress: Show tqdm progress bars (on a terminal).

    Returns:
        The content of ``prepare.json``, plus ``"output"`` (the folder written).

    Raises:
        SmecError: Bad arguments, a missing or unreadable source, an unknown file type, a
            failed download, or no usable article; nothing is left behind.
    """
    _check_wiki_args(lang, dump_date, num_passages, min_words, max_words)
    out_dir = Path(out_dir).expanduser()
    source = check_source("Wikipedia", source, download, folder=False,
                          where=url or WIKI_TREE_URL.format(lang=lang, dump_date=dump_date), url=url)
    if source is not None:
        for path in _wiki_sources(source):
            _wiki_format(path)
    elif url is not None:
        _wiki_format(Path(PurePosixPath(urlparse(url).path).name or "unnamed"))
    settings = {"lang": lang, "dump_date": dump_date, "num_passages": num_passages, "min_words": min_words,
                "max_words": max_words, "pairs": pairs, "seed": seed}
    with staging(out_dir) as tmp:
        writer = _WikiWriter(tmp, min_words, max_words, num_passages, pairs, seed)
        tallies: list[FileTally] = []
        try:
            if download:
                folder = tmp / ".download"
                folder.mkdir()
                urls = [url] if url is not None else _hf_shard_urls(lang, dump_date, progress, folder)
                for shard_url in urls:
                    if writer.full:
                        break
                    path = download_file(shard_url, folder, progress)
                    tallies.append(_read_into(writer, path, progress, label=shard_url))
                    path.unlink()
                shutil.rmtree(folder)
                origin = {"source": url or WIKI_TREE_URL.format(lang=lang, dump_date=dump_date)}
            else:
                for path in _wiki_sources(source):
                    if writer.full:
                        break
                    tallies.append(_read_into(writer, path, progress))
                origin = {"source": str(source)}
        finally:
            writer.close()
        if writer.passages == 0:
            skipped = ", ".join(f"{n} {r}" for r, n in writer.skipped.items()) or "none skipped"
            bad = sum(t.bad for t in tallies)
            raise SmecError(f"{origin['source']}: no usable article ({writer.read} read: {skipped}; {bad} bad rows)")
        summary = {
            "dataset": "wikipedia",
            **origin,
            "format": _wiki_format(tallies[0].path),
            "settings": settings,
            "files": {t.path.name: t.to_dict() for t in tallies},
            "articles_read": writer.read,
            "articles_kept": writer.kept,
            "articles_skipped": dict(sorted(writer.skipped.items())),
            "bad_rows": sum(t.bad for t in tallies),
            "passages_written": writer.passages,
            "short_tails_dropped": writer.tails_dropped,
            "pairs_written": dict(writer.pair_counts) if pairs else {},
            "stopped_at_num_passages": writer.full,
        }
        write_json(tmp / "prepare.json", summary)
    log.info("Wikipedia ready at %s: %d passages from %d of %d articles", out_dir, writer.passages,
             writer.kept, writer.read)
    return {**summary, "output": str(out_dir)}


def _read_into(writer: _WikiWriter, path: Path, progress: bool, label: str | None = None) -> FileTally:
    unit = {"parquet": "row", "xml": "page"}.get(_wiki_format(path), "line")
    tally = FileTally(path, unit=unit, label=label)
    log.info("reading articles from %s", label or path)
    for article in _read_articles(path, tally, progress):
        writer.add(article, tally)
        if writer.full:
            break
    tally.warn()
    return tally


def wikipedia_summary_line(s: dict) -> str:
    """The line ``smec prepare wikipedia`` prints for :func:`prepare_wikipedia`'s summary."""
    skipped = ", ".join(f"{n} {r}" for r, n in s["articles_skipped"].items()) or "none"
    pairs = sum(s["pairs_written"].values())
    return (f"{s['output']}: {s['passages_written']} passages from {s['articles_kept']} of {s['articles_read']} "
            f"articles (skipped: {skipped}), {pairs} pairs; {s['bad_rows']} bad rows skipped (see prepare.json)")
