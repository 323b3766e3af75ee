"""Preparing training data: MS MARCO passage ranking triplets and Wikipedia passages.

Both commands read the real public files, skip and count bad rows, and write their output
into a temporary folder beside ``out_dir`` that is renamed into place only when complete, so an
interrupted run never leaves a folder that a later run would trust.

MS MARCO (:func:`prepare_msmarco`) reads a folder holding the passage-ranking files under their
real names (each may also be gzipped, ``NAME.gz``):

    collection.tsv                    pid<TAB>passage
    queries.train.tsv                 qid<TAB>query
    qrels.train.tsv                   qid 0 pid relevance (TREC; tabs or spaces)
    qidpidtriples.train.full.2.tsv    qid<TAB>pid_positive<TAB>pid_negative   (optional)
    top1000.train.tsv                 qid<TAB>pid<TAB>query<TAB>passage        (optional)

and writes ``out_dir`` with:

    corpus.jsonl         {"_id", "title": "", "text"}: every passage a kept query uses
    queries.jsonl        {"_id", "text"}: the kept queries
    qrels/train.tsv      query-id<TAB>corpus-id<TAB>score: every judged positive of the train queries
    qrels/dev.tsv        the same for the dev queries (absent when dev_fraction is 0)
    triplets/train.jsonl {"query_id", "query", "positive_id", "positive", "negative_ids", "negatives"}
    triplets/dev.jsonl   the same for the dev queries (empty when dev_fraction is 0)
    prepare.json         settings and counts: per input file rows read, rows kept, bad rows
                         skipped by reason with the first few line numbers; queries and
                         passages kept; negatives taken from the file or drawn at random

The folder has the BEIR layout: ``smec run data.dataset=<out_dir> data.eval_split=dev`` loads
it. Each query gives one triplet: its first judged positive (qrels file order) and
``negatives_per_query`` negatives. Negatives come from the triples or top-1000 file when there is one (for each query,
the candidates with the smallest seeded hash of (seed, qid, pid), so the choice does not depend
on the file's order), topped up with passages drawn at random from the collection; never a
passage judged for that query. Memory: the set of passage ids (about 1 GB for the full 8.8M
passages) and the train queries and qrels; passage texts are kept only for the passages used,
found in a second pass over the collection.

Wikipedia (:func:`prepare_wikipedia`) reads one of: a Hugging Face ``wikimedia/wikipedia``
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
one word. Downloads (``download=True``) are refused when ``HF_HUB_OFFLINE`` or ``SMEC_OFFLINE`` is
set; any URL may be a ``file://`` URL.
"""

from __future__ import annotations

import bz2
import gzip
import heapq
import html
import json
import logging
import math
import os
import random
import re
import shutil
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Iterable, Iterator
from urllib.parse import urlparse
from xml.etree import ElementTree

from tqdm.auto import tqdm

from ..errors import SmecError
from .download import _fetch, downloads_disabled

log = logging.getLogger(__name__)

MSMARCO_BASE_URL = "https://msmarco.z22.web.core.windows.net/msmarcoranking/"
# (file to fetch, the files it holds): the archive members are taken by name, wherever they sit.
MSMARCO_DOWNLOADS = (
    ("collection.tar.gz", ("collection.tsv",)),
    ("queries.tar.gz", ("queries.train.tsv",)),
    ("qrels.train.tsv", ()),
)
MSMARCO_COLLECTION = "collection.tsv"
MSMARCO_QUERIES = "queries.train.tsv"
MSMARCO_QRELS = "qrels.train.tsv"
# Candidate negatives, in order of preference; the first one present is read.
MSMARCO_NEGATIVES = ("qidpidtriples.train.full.2.tsv", "qidpidtriples.train.full.tsv", "top1000.train.tsv")

WIKI_TREE_URL = "https://huggingface.co/api/datasets/wikimedia/wikipedia/tree/main/{dump_date}.{lang}"
WIKI_FILE_URL = "https://huggingface.co/datasets/wikimedia/wikipedia/resolve/main/{path}"
WIKI_COLUMNS = ("id", "title", "text")

_EXAMPLES = 5  # bad rows listed by position in prepare.json and in the warning
_SHUFFLE_BUFFER = 10_000  # pairs held at once while shuffling pairs.jsonl
_INT_RE = re.compile(r"^[0-9]+$")
_REL_RE = re.compile(r"^-?[0-9]+$")
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- bad rows


@dataclass
class FileTally:
    """Rows read, kept and skipped in one input file.

    Attributes:
        path: The file.
        unit: What a position counts: ``"line"``, ``"row"`` (parquet) or ``"page"`` (XML).
        label: How messages name the file when not by ``path`` (a downloaded file: its URL).
        read: Rows looked at (blank lines excluded).
        kept: Rows used.
        skipped: Reason -> rows skipped for it.
        examples: The first few skipped rows: ``{unit: position, "reason": text}``.
    """

    path: Path
    unit: str = "line"
    label: str | None = None
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def skip(self, where: int, reason: str, detail: str = "") -> None:
        """Counts a bad row under ``reason``; the first few keep ``detail`` and their position."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append({self.unit: where, "reason": detail or reason})

    @property
    def bad(self) -> int:
        return sum(self.skipped.values())

    def warn(self) -> None:
        """Logs one warning summarising the skipped rows, if any."""
        if not self.bad:
            return
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
        first = "; ".join(f"{self.unit} {e[self.unit]}: {e['reason']}" for e in self.examples)
        log.warning("%s: skipped %d bad %s(s) of %d (%s); first: %s", self.label or self.path, self.bad,
                    self.unit, self.read, reasons, first)

    def to_dict(self) -> dict:
        return {"path": self.label or str(self.path), "rows_read": self.read, "rows_kept": self.kept,
                "bad_rows": self.bad, "bad_by_reason": dict(self.skipped), "bad_examples": list(self.examples)}


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- reading


def _open_binary(path: Path) -> IO[bytes]:
    """Opens a file for reading bytes, decompressing ``.gz`` and ``.bz2``."""
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        if path.suffix == ".bz2":
            return bz2.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise SmecError(f"{path}: cannot read ({e.strerror or e})") from None


def _bar(iterable: Iterable, desc: str, progress: bool, unit: str = " lines", total: int | None = None):
    # disable=None turns the bar off when stderr is not a terminal (logs, CI).
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=None if progress else True, leave=False)


def _lines(path: Path, tally: FileTally | None, progress: bool = False) -> Iterator[tuple[int, str]]:
    """Yields ``(line number, text)`` for the non-blank lines of a UTF-8 file.

    A line that is not valid UTF-8 is counted in ``tally`` (when given) and skipped; a file
    cut short (a truncated ``.gz``) or unreadable raises, since nothing after it can be read.
    """
    handle = _open_binary(path)
    try:
        with handle:
            for lineno, raw in enumerate(_bar(handle, path.name, progress), 1):
                if not raw.strip():
                    continue
                if tally is not None:
                    tally.read += 1
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    if tally is not None:
                        tally.skip(lineno, "not UTF-8", f"not valid UTF-8 (byte {raw[e.start]:#04x})")
                    continue
                yield lineno, line.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as e:
        raise SmecError(f"{path}: cannot read to the end ({e})") from None


def _int_id(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INT_RE.match(text) else None


# --------------------------------------------------------------------------- output and downloads


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """Yields a temporary folder beside ``out_dir`` that becomes ``out_dir`` on success.

    The folder is on the same filesystem as ``out_dir``, so the final rename is atomic; on any
    error (or Ctrl-C) it is removed, and ``out_dir`` is left as it was.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # Could be someone's data, or an earlier result; never overwrite either.
        raise SmecError(f"{out_dir}: exists and is not an empty folder; remove it or choose another --output")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as e:
        raise SmecError(f"{out_dir.parent}: cannot create the output there ({e.strerror or e})") from None
    try:
        yield tmp
        try:
            os.replace(tmp, out_dir)  # replaces an empty out_dir too
        except OSError as e:
            raise SmecError(f"{out_dir}: cannot move the result into place ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require_online(what: str) -> None:
    if downloads_disabled():
        raise SmecError(f"{what}: downloads are off (HF_HUB_OFFLINE or SMEC_OFFLINE is set); "
                        f"unset them or pass --source")


def _download(url: str, folder: Path, progress: bool) -> Path:
    """Fetches ``url`` into ``folder`` under its own file name and returns the file."""
    name = PurePosixPath(urlparse(url).path).name
    if not name:
        raise SmecError(f"{url}: the URL names no file")
    dest = folder / name
    log.info("downloading %s", url)
    _fetch(url, dest, name, progress)
    return dest


def _extract_members(archive: Path, names: Iterable[str], dest: Path, url: str) -> None:
    """Copies the regular files called ``names`` (at any depth) out of a tar archive into ``dest``.

    Members are streamed out by name, so a hostile path in the archive is never written.
    """
    wanted, found = set(names), set()
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                name = PurePosixPath(member.name).name
                if name in wanted and name not in found and member.isfile():
                    src = tf.extractfile(member)
                    with src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    found.add(name)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise SmecError(f"{url}: not a valid tar archive ({e})") from None
    except OSError as e:
        raise SmecError(f"{url}: cannot extract into {dest} ({e.strerror or e})") from None
    missing = sorted(wanted - found)
    if missing:
        raise SmecError(f"{url}: the archive holds no {', '.join(missing)}")


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- MS MARCO


def _find_input(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mix(seed: int, a: int, b: int) -> int:
    """A 64-bit hash of three integers (splitmix64 finaliser): a seeded, order-free sort key."""
    x = (seed * 0x9E3779B97F4A7C15 + a * 0xBF58476D1CE4E5B9 + b * 0x94D049BB133111EB + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _read_collection_ids(path: Path, progress: bool) -> tuple[set[int], list[int], FileTally]:
    """First pass over ``collection.tsv``: the valid passage ids, as a set and in file order."""
    tally = FileTally(path)
    ids: set[int] = set()
    order: list[int] = []
    for lineno, line in _lines(path, tally, progress):
        cols = line.split("\t")
        if len(cols) != 2:
            tally.skip(lineno, "wrong column count",
                       f"expected 2 tab-separated columns (pid, passage), got {len(cols)}")
            continue
        pid = _int_id(cols[0])
        if pid is None:
            tally.skip(lineno, "non-integer id", f"pid {_short(cols[0])} is not a non-negative integer")
        elif not cols[1].strip():
            tally.skip(lineno, "empty text", f"empty passage (pid {pid})")
        elif pid in ids:
            tally.skip(lineno, "duplicate id", f"duplicate pid {pid} (the first is kept)")
        else:
            ids.add(pid)
            order.append(pid)
            tally.kept += 1
    return ids, order, tally


def _read_queries(path: Path, progress: bool) -> tuple[dict[int, str], FileTally]:
    tally = FileTally(path)
    queries: dict[int, str] = {}
    for lineno, line in _lines(path, tally, progress):
        cols = line.split("\t")
        if len(cols) != 2:
            tally.skip(lineno, "wrong column count", f"expected 2 tab-separated columns (qid, query), got {len(cols)}")
            continue
        qid, text = _int_id(cols[0]), " ".join(cols[1].split())
        if qid is None:
            tally.skip(lineno, "non-integer id", f"qid {_short(cols[0])} is not a non-negative integer")
        elif not text:
            tally.skip(lineno, "empty text", f"empty query (qid {qid})")
        elif qid in queries:
            tally.skip(lineno, "duplicate id", f"duplicate qid {qid} (the first is kept)")
        else:
            queries[qid] = text
            tally.kept += 1
    return queries, tally


def _read_qrels(
    path: Path, queries: dict[int, str], pids: set[int], progress: bool
) -> tuple[dict[int, dict[int, int]], FileTally]:
    """Reads TREC qrels (``qid 0 pid relevance``): query -> judged pid -> relevance, file order."""
    tally = FileTally(path)
    judged: dict[int, dict[int, int]] = {}
    for lineno, line in _lines(path, tally, progress):
        cols = line.split()  # MS MARCO uses tabs, TREC files spaces
        if len(cols) != 4:
            tally.skip(lineno, "wrong column count", f"expected 4 columns (qid 0 pid relevance), got {len(cols)}")
            continue
        qid, pid = _int_id(cols[0]), _int_id(cols[2])
        if qid is None or pid is None:
            bad = cols[0] if qid is None else cols[2]
            tally.skip(lineno, "non-integer id", f"id {_short(bad)} is not a non-negative integer")
        elif not _REL_RE.match(cols[3]):
            tally.skip(lineno, "non-integer relevance", f"relevance {_short(cols[3])} is not an integer")
        elif qid not in queries:
            tally.skip(lineno, "unknown id", f"qid {qid} is not in {MSMARCO_QUERIES}")
        elif pid not in pids:
            tally.skip(lineno, "unknown id", f"pid {pid} is not in {MSMARCO_COLLECTION}")
        elif pid in judged.get(qid, ()):
            tally.skip(lineno, "duplicate judgment", f"qid {qid} pid {pid} judged twice (the first is kept)")
        else:
            judged.setdefault(qid, {})[pid] = int(cols[3])
            tally.kept += 1
    return judged, tally


def _read_candidate_negatives(
    path: Path,
    wanted: set[int],
    judged: dict[int, dict[int, int]],
    pids: set[int],
    k: int,
    seed: int,
    progress: bool,
) -> tuple[dict[int, list[int]], FileTally, int]:
    """Picks up to ``k`` negatives per wanted query from a triples or top-1000 file.

    Returns:
        Query -> negatives (ascending hash order), the file's tally, and how many candidates
        were dropped because the query judges them.
    """
    tally = FileTally(path)
    top1000 = path.name.startswith("top1000")
    columns, at = (4, 1) if top1000 else (3, 2)  # where the candidate pid sits
    layout = "qid, pid, query, passage" if top1000 else "qid, positive pid, negative pid"
    heaps: dict[int, list[tuple[int, int]]] = {}
    dropped_judged = 0
    for lineno, line in _lines(path, tally, progress):
        cols = line.split("\t")
        if len(cols) != columns:
            tally.skip(lineno, "wrong column count",
                       f"expected {columns} tab-separated columns ({layout}), got {len(cols)}")
            continue
        qid = _int_id(cols[0])
        if qid is None:
            tally.skip(lineno, "non-integer id", f"qid {_short(cols[0])} is not a non-negative integer")
            continue
        if qid not in wanted:
            continue  # the full file has ~400M rows: only the kept queries' rows are checked further
        pid = _int_id(cols[at])
        if pid is None:
            tally.skip(lineno, "non-integer id", f"pid {_short(cols[at])} is not a non-negative integer")
            continue
        if pid not in pids:
            tally.skip(lineno, "unknown id", f"pid {pid} is not in {MSMARCO_COLLECTION}")
            continue
        tally.kept += 1
        if pid in judged.get(qid, ()):
            dropped_judged += 1
            continue
        # Keep the k smallest keys (a max-heap of negated keys): the same pick in any file order.
        key = _mix(seed, qid, pid)
        heap = heaps.setdefault(qid, [])
        if any(p == pid for _, p in heap):
            continue
        if len(heap) < k:
            heapq.heappush(heap, (-key, pid))
        elif -heap[0][0] > key:
            heapq.heapreplace(heap, (-key, pid))
    chosen = {qid: [pid for _, pid in sorted(heap, reverse=True)] for qid, heap in heaps.items()}
    return chosen, tally, dropped_judged


def _split_queries(
    eligible: list[int], split_ratio: float, dev_fraction: float, max_train_samples: int | None, seed: int
) -> tuple[list[int], list[int]]:
    """Shuffles the eligible queries with the seed and cuts them into train and dev."""
    order = sorted(eligible)
    random.Random(seed).shuffle(order)
    pool = order[: max(1, round(split_ratio * len(order)))]
    total = len(pool)
    if max_train_samples is not None:
        # Dev keeps dev_fraction of the queries used, so a capped train set gets a dev set to match.
        total = min(total, math.ceil(max_train_samples / (1.0 - dev_fraction) - 1e-9))
    n_dev = round(dev_fraction * total)
    if dev_fraction > 0 and total >= 2:
        n_dev = min(max(n_dev, 1), total - 1)
    elif total < 2:
        n_dev = 0
    dev = pool[:n_dev]
    train = pool[n_dev:total]
    if max_train_samples is not None:
        train = train[:max_train_samples]
    return train, dev


def _check_msmarco_args(split_ratio, dev_fraction, negatives_per_query, max_train_samples) -> None:
    if not 0.0 < split_ratio <= 1.0:
        raise SmecError(f"split_ratio must be in (0, 1], got {split_ratio}")
    if not 0.0 <= dev_fraction < 1.0:
        raise SmecError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    if negatives_per_query < 0:
        raise SmecError(f"negatives_per_query must be 0 or more, got {negatives_per_query}")
    if max_train_samples is not None and max_train_samples < 1:
        raise SmecError(f"max_train_samples must be 1 or more, got {max_train_samples}")


def prepare_msmarco(
    out_dir: str | Path,
    source: str | Path | None = None,
    *,
    download: bool = False,
    base_url: str | None = None,
    max_train_samples: int | None = None,
    split_ratio: float = 1.0,
    negatives_per_query: int = 4,
    dev_fraction: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Builds MS MARCO passage-ranking training data: a BEIR folder plus triplets.

    The output files are described in the module docstring.

    Args:
        out_dir: The folder to create; it must not exist, or be empty.
        source: A folder with ``collection.tsv``, ``queries.train.tsv`` and
            ``qrels.train.tsv`` (each possibly ``.gz``), and optionally
            ``qidpidtriples.train.full.2.tsv`` or ``top1000.train.tsv`` for hard negatives.
        download: Fetch ``collection.tar.gz``, ``queries.tar.gz`` and ``qrels.train.tsv``
            instead (into a temporary folder inside the output being built, removed at the end).
            Negatives are then drawn at random; for hard negatives, fetch
            ``qidpidtriples.train.full.2.tsv.gz`` (several GB) into a ``source`` folder instead.
        base_url: Where to download from; defaults to :data:`MSMARCO_BASE_URL`.
        max_train_samples: At most this many training queries (one triplet each); dev keeps
            ``dev_fraction`` of all the queries used.
        split_ratio: The fraction of the queries with a judged positive to use, in (0, 1].
        negatives_per_query: Negatives per triplet.
        dev_fraction: The fraction of the used queries held out as dev, in [0, 1).
        seed: Seeds the query shuffle, the negative choice and the random negatives.
        progress: Show tqdm progress bars (on a terminal).

    Returns:
        The content of ``prepare.json``, plus ``"output"`` (the folder written).

    Raises:
        SmecError: Bad arguments, a missing source folder or required file, a failed
            download, or no query left with a judged positive; nothing is left behind.
    """
    _check_msmarco_args(split_ratio, dev_fraction, negatives_per_query, max_train_samples)
    out_dir = Path(out_dir).expanduser()
    if (source is None) == (not download):
        raise SmecError("MS MARCO: give either a source folder or download=True (--source DIR or --download)")
    if download:
        _require_online(f"MS MARCO download from {base_url or MSMARCO_BASE_URL}")
    else:
        source = Path(source).expanduser()
        if not source.is_dir():
            raise SmecError(f"{source}: MS MARCO source folder not found")
        _msmarco_inputs(source)  # fail on a missing file before creating anything
    settings = {"max_train_samples": max_train_samples, "split_ratio": split_ratio,
                "negatives_per_query": negatives_per_query, "dev_fraction": dev_fraction, "seed": seed}
    with _staging(out_dir) as tmp:
        if download:
            base = base_url or MSMARCO_BASE_URL
            base = base if base.endswith("/") else base + "/"
            folder = tmp / ".download"
            folder.mkdir()
            for name, members in MSMARCO_DOWNLOADS:
                fetched = _download(base + name, folder, progress)
                if members:
                    _extract_members(fetched, members, folder, base + name)
                    fetched.unlink()
            labels = {m: f"{base}{name}" + (f" ({m})" if m != name else "")
                      for name, members in MSMARCO_DOWNLOADS for m in (members or (name,))}
            summary = _build_msmarco(folder, tmp, settings, progress, labels)
            summary["source"] = base
            shutil.rmtree(folder)
        else:
            summary = _build_msmarco(source, tmp, settings, progress)
            summary["source"] = str(source)
        _write_json(tmp / "prepare.json", summary)
    log.info("MS MARCO ready at %s: %d train and %d dev triplets, %d passages", out_dir,
             summary["queries"]["train"], summary["queries"]["dev"], summary["passages_written"])
    return {**summary, "output": str(out_dir)}


def _msmarco_inputs(source: Path) -> tuple[Path, Path, Path, Path | None]:
    found = []
    for name in (MSMARCO_COLLECTION, MSMARCO_QUERIES, MSMARCO_QRELS):
        path = _find_input(source, name)
        if path is None:
            raise SmecError(f"{source / name}: file not found (nor {name}.gz); MS MARCO needs "
                            f"{MSMARCO_COLLECTION}, {MSMARCO_QUERIES} and {MSMARCO_QRELS}")
        found.append(path)
    negatives = next((p for p in (_find_input(source, n) for n in MSMARCO_NEGATIVES) if p is not None), None)
    return found[0], found[1], found[2], negatives


def _build_msmarco(source: Path, out: Path, settings: dict, progress: bool, labels: dict | None = None) -> dict:
    collection, queries_path, qrels_path, negatives_path = _msmarco_inputs(source)
    k, seed = settings["negatives_per_query"], settings["seed"]

    log.info("reading passage ids from %s", collection)
    pids, pid_order, collection_tally = _read_collection_ids(collection, progress)
    if not pids:
        raise SmecError(f"{collection}: no usable passage ({collection_tally.bad} bad rows)")
    queries, queries_tally = _read_queries(queries_path, progress)
    if not queries:
        raise SmecError(f"{queries_path}: no usable query ({queries_tally.bad} bad rows)")
    judged, qrels_tally = _read_qrels(qrels_path, queries, pids, progress)
    positives = {q: [p for p, rel in docs.items() if rel > 0] for q, docs in judged.items()}
    eligible = [q for q in queries if positives.get(q)]
    if not eligible:
        raise SmecError(f"{qrels_path}: no query has a positive judgment (relevance > 0) naming a known "
                        f"query and passage ({qrels_tally.kept} usable of {qrels_tally.read} rows)")
    train, dev = _split_queries(eligible, settings["split_ratio"], settings["dev_fraction"],
                                settings["max_train_samples"], seed)
    used = train + dev

    tallies = [collection_tally, queries_tally, qrels_tally]
    negatives: dict[int, list[int]] = {}
    dropped_judged = 0
    if negatives_path is not None and k > 0:
        log.info("choosing negatives from %s", negatives_path)
        negatives, negatives_tally, dropped_judged = _read_candidate_negatives(
            negatives_path, set(used), judged, pids, k, seed, progress)
        tallies.append(negatives_tally)
    from_file = sum(len(v) for v in negatives.values())

    # Top up from the whole collection; a judged passage (of any relevance) is never a negative.
    rng = random.Random(f"msmarco-negatives-{seed}")
    random_added, short_queries = 0, 0
    for qid in used:
        chosen = negatives.setdefault(qid, [])
        taken = set(chosen)
        tries = 0
        while len(chosen) < k and tries < 50 * k:
            tries += 1
            pid = pid_order[rng.randrange(len(pid_order))]
            if pid not in taken and pid not in judged.get(qid, ()):
                chosen.append(pid)
                taken.add(pid)
                random_added += 1
        short_queries += len(chosen) < k

    needed = {p for q in used for p in positives[q]} | {p for q in used for p in negatives[q]}
    texts: dict[int, str] = {}
    (out / "qrels").mkdir()
    (out / "triplets").mkdir()
    log.info("writing the %d passages used", len(needed))
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        # Second pass: the first valid row of each id, exactly as the first pass kept.
        for _, line in _lines(collection, None, progress):
            cols = line.split("\t")
            if len(cols) != 2 or not cols[1].strip():
                continue
            pid = _int_id(cols[0])
            if pid in needed and pid not in texts:
                texts[pid] = " ".join(cols[1].split())
                f.write(json.dumps({"_id": str(pid), "title": "", "text": texts[pid]}, ensure_ascii=False) + "\n")
    used_set = set(used)
    _write_jsonl(out / "queries.jsonl", ({"_id": str(q), "text": t} for q, t in queries.items() if q in used_set))
    for split, qids in (("train", train), ("dev", dev)):
        if qids:
            with open(out / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
                f.write("query-id\tcorpus-id\tscore\n")
                for q in qids:
                    f.writelines(f"{q}\t{p}\t{judged[q][p]}\n" for p in positives[q])
        _write_jsonl(out / "triplets" / f"{split}.jsonl", (
            {"query_id": str(q), "query": queries[q], "positive_id": str(positives[q][0]),
             "positive": texts[positives[q][0]], "negative_ids": [str(p) for p in negatives[q]],
             "negatives": [texts[p] for p in negatives[q]]}
            for q in qids))
    for tally in tallies:
        tally.label = (labels or {}).get(tally.path.name)
        tally.warn()
    if short_queries:
        log.warning("%d quer(ies) got fewer than %d negatives: the collection has too few unjudged passages",
                    short_queries, k)
    return {
        "dataset": "msmarco-passage",
        "settings": settings,
        "files": {t.path.name: t.to_dict() for t in tallies},
        "queries": {"with_positive": len(eligible), "used": len(used), "train": len(train), "dev": len(dev)},
        "passages_written": len(texts),
        "negatives": {"from_file": from_file, "random": random_added,
                      "file": negatives_path.name if negatives_path is not None else None,
                      "judged_candidates_dropped": dropped_judged, "queries_short": short_queries},
    }


# --------------------------------------------------------------------------- wikitext


_STOP_SECTIONS = {
    "references", "see also", "external links", "further reading", "notes", "bibliography", "sources",
    "citations", "footnotes", "notes and references", "einzelnachweise", "weblinks", "literatur",
    "siehe auch", "anmerkungen", "références", "liens externes", "voir aussi", "notes et références",
    "bibliographie", "referencias", "enlaces externos", "véase también", "bibliografía", "notas",
    "note", "bibliografia", "collegamenti esterni", "voci correlate", "referências", "ligações externas",
    "примечания", "ссылки", "литература", "脚注", "参考文献", "外部リンク", "関連項目", "参考资料",
    "外部链接", "参见", "参考",
}
# File, image, category and media links in the largest wikis; such links are dropped whole.
_DROP_NAMESPACES = {
    "file", "image", "category", "media", "datei", "bild", "kategorie", "fichier", "catégorie",
    "archivo", "imagen", "categoría", "immagine", "categoria", "ficheiro", "arquivo", "plik",
    "kategoria", "bestand", "categorie", "файл", "изображение", "категория", "ファイル", "画像",
    "カテゴリ", "文件", "图像", "分类",
}
_DISAMBIGUATION_TEMPLATES = {
    "disambiguation", "disambig", "dab", "disamb", "hndis", "geodis", "letter disambiguation",
    "begriffsklärung", "homonymie", "desambiguación", "disambigua", "неоднозначность", "曖昧さ回避",
    "消歧义", "desambiguação",
}
_DISAMBIGUATION_TITLE_RE = re.compile(
    r"\((disambiguation|begriffsklärung|homonymie|desambiguación|disambigua|значения|曖昧さ回避|消歧义)\)\s*$",
    re.I)
_REFER_TO_RE = re.compile(r"\b(may|can|might) (also )?(refer to|mean)\s*:", re.I)
_REDIRECT_RE = re.compile(r"^\s*#\s*(redirect|weiterleitung|redirection|redirección|rinvia|"
                          r"перенаправление|転送|重定向)", re.I)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[^\sa-z])|(?<=[。！？])\s*")

_COMMENT_RE = re.compile(r"<!--.*?(-->|$)", re.S)
_DROPPED_TAGS = "ref|math|gallery|timeline|syntaxhighlight|source|pre|score|imagemap|chem|ce|graph|mapframe|" \
                "templatedata|references|hiero|inputbox|categorytree"
_SELF_CLOSING_RE = re.compile(rf"<(?:{_DROPPED_TAGS})\b[^>]*/>", re.I)
_PAIRED_TAG_RE = re.compile(rf"<({_DROPPED_TAGS})\b[^>]*>.*?</\1\s*>", re.S | re.I)
_BR_RE = re.compile(r"<br\s*/?>", re.I)
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][^>]*>")
_BRACES_RE = re.compile(r"\{\{|\}\}")
_TABLE_RE = re.compile(r"(?m)^[ \t]*(\{\||\|\})")
_INNER_LINK_RE = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK_RE = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_BARE_URL_RE = re.compile(r"https?://[^\s<>\]]+")
_QUOTES_RE = re.compile(r"'{2,5}")
_HEADING_RE = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_MAGIC_RE = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS_RE = re.compile(r"\(\s*[,;:]?\s*\)")
_SPACE_BEFORE_RE = re.compile(r"\s+([,.])(?=\s|$)")
_KEPT_TEMPLATES = {"lang", "nowrap", "nobr", "transl", "transliteration", "small", "keep together"}


def _template_text(body: str) -> str:
    """What a template shows that is worth keeping: the text of ``{{lang|fr|texte}}`` and the like."""
    parts = body[2:-2].split("|")
    name = parts[0].strip().lower()
    if name in _KEPT_TEMPLATES and len(parts) > 1:
        return _strip_templates(parts[-1])
    if name in ("convert", "cvt") and len(parts) > 2:
        return f"{parts[1].strip()} {parts[2].strip()}"
    return ""


def _strip_templates(text: str) -> str:
    """Removes ``{{...}}`` templates, nested ones too, keeping the text of a few (see above)."""
    out, depth, start, last = [], 0, 0, 0
    for m in _BRACES_RE.finditer(text):
        if m.group() == "{{":
            if depth == 0:
                out.append(text[last:m.start()])
                start = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                out.append(_template_text(text[start:m.end()]))
                last = m.end()
    if depth == 0:
        out.append(text[last:])  # an unclosed template swallows the rest, as MediaWiki shows it
    return "".join(out)


def _strip_tables(text: str) -> str:
    """Removes ``{| ... |}`` tables, nested ones too."""
    out, depth, last = [], 0, 0
    for m in _TABLE_RE.finditer(text):
        if m.group(1) == "{|":
            if depth == 0:
                out.append(text[last:m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = m.end()
    if depth == 0:
        out.append(text[last:])
    return "".join(out)


def _link_text(m: re.Match) -> str:
    inner = m.group(1)
    target, _, label = inner.partition("|")
    target = target.strip()
    prefix, colon, _ = target.lstrip(":").partition(":")
    if colon and prefix.strip().lower() in _DROP_NAMESPACES and not target.startswith(":"):
        return ""
    if label:
        return label
    target = target.lstrip(":")
    return target.split("#", 1)[0] or target


def _strip_links(text: str) -> str:
    # Innermost links first, so a file caption holding links is removed whole afterwards.
    while True:
        new = _INNER_LINK_RE.sub(_link_text, text)
        if new == text:
            return new
        text = new


def _has_disambiguation_template(wikitext: str) -> bool:
    for m in re.finditer(r"\{\{\s*([^|{}]+?)\s*(\||\}\})", wikitext):
        if m.group(1).lower() in _DISAMBIGUATION_TEMPLATES:
            return True
    return False


def clean_wikitext(wikitext: str) -> list[str]:
    """Turns MediaWiki markup into plain paragraphs.

    Removes comments, references and other non-prose tags, templates (keeping the text of
    ``lang``, ``nowrap`` and ``convert``), tables, file/image/category links, external-link
    URLs, bold and italics, list items (``*`` and ``#`` lines), headings, HTML tags and
    entities, and whole sections such as References or External links; keeps link labels.

    Args:
        wikitext: The page source.

    Returns:
        The paragraphs, each with whitespace collapsed to single spaces.
    """
    text = _COMMENT_RE.sub("", wikitext)
    text = _SELF_CLOSING_RE.sub("", text)
    text = _PAIRED_TAG_RE.sub("", text)
    text = _strip_templates(text)
    text = _strip_tables(text)
    text = _strip_links(text)
    text = _EXTERNAL_LINK_RE.sub(lambda m: m.group(1) or "", text)
    text = _BARE_URL_RE.sub("", text)
    text = _QUOTES_RE.sub("", text)
    text = _MAGIC_RE.sub("", text)
    text = _BR_RE.sub(" ", text)
    text = _HTML_TAG_RE.sub("", text)
    paragraphs: list[str] = []
    current: list[str] = []
    skipping = False

    def end_paragraph() -> None:
        if current:
            paragraphs.append(_tidy(" ".join(current)))
            current.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        heading = _HEADING_RE.match(stripped)
        if heading:
            end_paragraph()
            skipping = heading.group(2).strip().lower() in _STOP_SECTIONS
            continue
        if skipping:
            continue
        if not stripped or stripped.startswith("----"):
            end_paragraph()
        elif stripped[0] in "*#|!":
            end_paragraph()  # list items and table leftovers: rarely prose
        else:
            current.append(stripped.lstrip(":;").strip())
    end_paragraph()
    return [p for p in paragraphs if p]


def _tidy(text: str) -> str:
    text = " ".join(html.unescape(text).split())
    text = _EMPTY_PARENS_RE.sub("", text)  # "(; )" left by removed templates
    text = _SPACE_BEFORE_RE.sub(r"\1", text)
    return " ".join(text.split())


def _plain_paragraphs(text: str) -> list[str]:
    """Paragraphs of already-plain article text (Hugging Face ``wikimedia/wikipedia``, WikiExtractor).

    Short lines without closing punctuation are section headings there: they end a paragraph
    and are dropped, and a heading such as "References" ends the article.
    """
    paragraphs = []
    for line in text.split("\n"):
        line = " ".join(line.split())
        if not line:
            continue
        if len(line.split()) <= 12 and line[-1] not in ".!?:;\"'”»)]。！？":
            if line.lower() in _STOP_SECTIONS:
                break
            continue
        paragraphs.append(line)
    return paragraphs


def _sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_RE.split(paragraph) if s.strip()]


def _count_words(text: str) -> int:
    return sum(1 for _ in _TOKEN_RE.finditer(text))


def _join(pieces: list[str]) -> str:
    text = ""
    for piece in pieces:
        if text and not (re.match(rf"[{_CJK}。、！？]", text[-1]) or re.match(rf"[{_CJK}]", piece[0])):
            text += " "
        text += piece
    return text


def split_passages(paragraphs: list[str], min_words: int, max_words: int) -> tuple[list[str], int]:
    """Packs sentences into passages of ``min_words`` to ``max_words`` words.

    A passage ends at a paragraph end once it holds ``min_words``, else at the sentence
    boundary before it would pass ``max_words``; a sentence longer than ``max_words`` is cut
    between words. A last piece shorter than ``min_words`` joins the previous passage when
    that stays within ``max_words``, and is dropped otherwise.

    Args:
        paragraphs: Whitespace-normalised paragraphs of one article.
        min_words: The fewest words in a passage.
        max_words: The most words in a passage.

    Returns:
        The passages, and 1 if a short tail was dropped, else 0.
    """
    passages: list[str] = []
    counts: list[int] = []
    current: list[str] = []
    n = 0

    def flush() -> None:
        nonlocal n
        passages.append(_join(current))
        counts.append(n)
        current.clear()
        n = 0

    for paragraph in paragraphs:
        for sentence in _sentences(paragraph):
            spans = [m.span() for m in _TOKEN_RE.finditer(sentence)]
            while spans:
                room = max_words - n
                if len(spans) <= room:
                    current.append(sentence[spans[0][0]:spans[-1][1]])
                    n += len(spans)
                    break
                if n >= min_words:
                    flush()
                    continue
                head, spans = spans[:room], spans[room:]
                current.append(sentence[head[0][0]:head[-1][1]])
                n += len(head)
                flush()
        if n >= min_words:
            flush()
    if not current:
        return passages, 0
    if passages and counts[-1] + n <= max_words:
        passages[-1] = _join([passages[-1], *current])
        return passages, 0
    return passages, 1


# --------------------------------------------------------------------------- Wikipedia sources


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


def _read_jsonl_articles(path: Path, tally: FileTally, progress: bool) -> Iterator[_Article]:
    for lineno, line in _lines(path, tally, progress):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            tally.skip(lineno, "malformed JSON", f"malformed JSON ({e.msg})")
            continue
        if not isinstance(record, dict):
            tally.skip(lineno, "not an object", f"expected a JSON object, got {type(record).__name__}")
            continue
        article_id = record.get("id", record.get("_id"))
        title, text = record.get("title", ""), record.get("text")
        if isinstance(article_id, int) and not isinstance(article_id, bool):
            article_id = str(article_id)
        if not isinstance(article_id, str) or not article_id.strip():
            tally.skip(lineno, "bad id", f"'id' must be a non-empty string or integer, got {_short(article_id)}")
        elif not isinstance(text, str):
            tally.skip(lineno, "bad text", f"'text' must be a string, got {type(text).__name__}")
        elif title is not None and not isinstance(title, str):
            tally.skip(lineno, "bad title", f"'title' must be a string, got {type(title).__name__}")
        else:
            yield _Article(lineno, article_id.strip(), title or "", text, wikitext=False)


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
        for batch in _bar(batches, path.name, progress, unit=" batches",
                          total=math.ceil(shard.metadata.num_rows / 256)):
            for record in batch.to_pylist():
                row += 1
                tally.read += 1
                article_id, title, text = (record[c] for c in WIKI_COLUMNS)
                if isinstance(article_id, int) and not isinstance(article_id, bool):
                    article_id = str(article_id)
                if not isinstance(article_id, str) or not article_id.strip():
                    tally.skip(row, "bad id", f"'id' must be a non-empty string, got {_short(article_id)}")
                elif not isinstance(text, str):
                    tally.skip(row, "bad text", f"'text' must be a string, got {_short(text)}")
                else:
                    yield _Article(row, article_id.strip(), title if isinstance(title, str) else "", text,
                                   wikitext=False)
    except OSError as e:  # pyarrow.ArrowIOError and friends: a damaged shard
        raise SmecError(f"{path}: cannot read row {row + 1} ({e})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _read_xml_articles(path: Path, tally: FileTally, progress: bool) -> Iterator[_Article]:
    """Streams ``<page>`` elements of a MediaWiki export, freeing each once read."""
    handle = _open_binary(path)
    page = 0
    try:
        with handle:
            root = None
            for event, elem in _bar(ElementTree.iterparse(handle, events=("start", "end")), path.name, progress,
                                    unit=" elements"):
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
                    tally.skip(page, "bad page", f"page {_short(title)} has no revision text")
                else:
                    yield _Article(page, article_id, title, text_elem.text or "", wikitext=True,
                                   redirect="redirect" in fields,
                                   namespace=int(ns) if _REL_RE.match(ns) else -1)
                elem.clear()
                root.clear()  # drops the finished pages the root still holds
    except ElementTree.ParseError as e:
        line, column = e.position
        raise SmecError(f"{path}:{line}: malformed XML at column {column} ({e})") from None
    except (OSError, EOFError, zlib.error) as e:
        raise SmecError(f"{path}: cannot read to the end ({e})") from None


def _is_disambiguation(article: _Article) -> bool:
    if _DISAMBIGUATION_TITLE_RE.search(article.title):
        return True
    if article.wikitext:
        return _has_disambiguation_template(article.text)
    # Plain text keeps no templates: "X may refer to:" opening the article is the sign.
    return bool(_REFER_TO_RE.search(article.text[:400]))


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
            tally.skip(article.where, "duplicate id", f"duplicate article id {_short(article.id)} (the first is kept)")
            return
        self.seen_ids.add(article.id)
        reason, chunks, paragraphs = None, [], []
        if article.namespace != 0:
            reason = "not_article"
        elif article.redirect or _REDIRECT_RE.match(article.text):
            reason = "redirect"
        elif _is_disambiguation(article):
            reason = "disambiguation"
        else:
            paragraphs = clean_wikitext(article.text) if article.wikitext else _plain_paragraphs(article.text)
            if sum(_count_words(p) for p in paragraphs) >= self.min_words:
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
        anchor = title or _sentences(paragraphs[0])[0]
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
    _fetch(tree_url, listing, "file list", progress)
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
    download: bool = False,
    url: str | None = None,
    lang: str = "en",
    dump_date: str = "20231101",
    num_passages: int | None = 100_000,
    min_words: int = 32,
    max_words: int = 128,
    pairs: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Builds a Wikipedia passage corpus and positive pairs for unsupervised training.

    The output files are described in the module docstring.

    Args:
        out_dir: The folder to create; it must not exist, or be empty.
        source: A parquet shard (or a folder of them), a JSONL file, or an XML dump.
        download: Fetch instead: ``url`` when given, else the ``wikimedia/wikipedia`` parquet
            shards of ``dump_date.lang``, one at a time until ``num_passages`` is reached; each
            is deleted once read.
        url: The file to download (any of the source formats, by its name).
        lang: Wikipedia language code, for the download.
        dump_date: ``wikimedia/wikipedia`` dump date (``YYYYMMDD``), for the download.
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
    if (source is None) == (not download):
        raise SmecError("Wikipedia: give either a source file or download=True (--source FILE or --download)")
    if url is not None and not download:
        raise SmecError("Wikipedia: a URL is only used with download=True (--download --url URL)")
    if download:
        where = url or WIKI_TREE_URL.format(lang=lang, dump_date=dump_date)
        _require_online(f"Wikipedia download from {where}")
        if url is not None:
            _wiki_format(Path(PurePosixPath(urlparse(url).path).name or "unnamed"))
    else:
        source = Path(source).expanduser()
        if not source.exists():
            raise SmecError(f"{source}: Wikipedia source not found")
        for path in _wiki_sources(source):
            _wiki_format(path)
    settings = {"lang": lang, "dump_date": dump_date, "num_passages": num_passages, "min_words": min_words,
                "max_words": max_words, "pairs": pairs, "seed": seed}
    with _staging(out_dir) as tmp:
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
                    path = _download(shard_url, folder, progress)
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
        _write_json(tmp / "prepare.json", summary)
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


# --------------------------------------------------------------------------- command line


def prepare_command(args) -> str:
    """``smec prepare msmarco|wikipedia``: runs the preparation and returns the summary to print."""
    progress = True
    if args.dataset == "msmarco":
        s = prepare_msmarco(args.output, args.source, download=args.download, base_url=args.base_url,
                            max_train_samples=args.max_train_samples, split_ratio=args.split_ratio,
                            negatives_per_query=args.negatives, dev_fraction=args.dev_fraction, seed=args.seed,
                            progress=progress)
        bad = sum(f["bad_rows"] for f in s["files"].values())
        neg = s["negatives"]
        return (f"{s['output']}: {s['queries']['train']} train and {s['queries']['dev']} dev queries (triplets), "
                f"{s['passages_written']} passages; negatives: {neg['from_file']} from "
                f"{neg['file'] or 'no file'}, {neg['random']} random; {bad} bad rows skipped (see prepare.json)")
    num = None if args.num_passages == 0 else args.num_passages
    s = prepare_wikipedia(args.output, args.source, download=args.download, url=args.url, lang=args.lang,
                          dump_date=args.dump_date, num_passages=num, min_words=args.min_words,
                          max_words=args.max_words, pairs=not args.no_pairs, seed=args.seed, progress=progress)
    skipped = ", ".join(f"{n} {r}" for r, n in s["articles_skipped"].items()) or "none"
    pairs = sum(s["pairs_written"].values())
    return (f"{s['output']}: {s['passages_written']} passages from {s['articles_kept']} of {s['articles_read']} "
            f"articles (skipped: {skipped}), {pairs} pairs; {s['bad_rows']} bad rows skipped (see prepare.json)")
