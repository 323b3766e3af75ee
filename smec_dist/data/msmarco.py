"""Preparing MS MARCO passage-ranking training data: a BEIR folder plus triplets.

The command reads the real public files, skips and counts bad rows, and writes its output
into a temporary folder beside ``out_dir`` that is renamed into place only when complete
(:func:`smec_dist.data.files.staging`), so an interrupted run never leaves a folder that a
later run would trust.

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

Downloads (``download=True``) are refused when ``HF_HUB_OFFLINE`` or ``SMEC_OFFLINE`` is set;
the base URL may be a ``file://`` URL.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import random
import re
import shutil
from pathlib import Path
from typing import Container, Iterator

from ..errors import SmecError
from .files import (FileTally, check_source, download_file, extract_members, short, staging, tallied_lines, write_json,
                    write_jsonl)

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

_INT_RE = re.compile(r"^[0-9]+$")
_REL_RE = re.compile(r"^-?[0-9]+$")
_MASK64 = (1 << 64) - 1


def _int_id(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INT_RE.match(text) else None


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


def _columns(tally: FileTally, lineno: int, line: str, n: int, layout: str) -> list[str] | None:
    """The tab-separated columns of a line; None (counted in ``tally``) unless there are ``n``."""
    cols = line.split("\t")
    if len(cols) != n:
        tally.skip(lineno, "wrong column count", f"expected {n} tab-separated columns ({layout}), got {len(cols)}")
        return None
    return cols


def _tallied_id(tally: FileTally, lineno: int, text: str, name: str) -> int | None:
    """``text`` as a non-negative integer id; None (counted in ``tally``) when it is not one."""
    value = _int_id(text)
    if value is None:
        tally.skip(lineno, "non-integer id", f"{name} {short(text)} is not a non-negative integer")
    return value


def _id_text_rows(path: Path, tally: FileTally, progress: bool, known: Container[int], id_name: str,
                  text_name: str) -> Iterator[tuple[int, str]]:
    """Yields ``(id, text)`` of the good rows of an ``id<TAB>text`` file (``collection.tsv``,
    ``queries.train.tsv``); bad rows, empty texts and ids in ``known`` are counted in ``tally``.

    The caller adds each id yielded to ``known``, so that a repeated id is skipped (the first
    is kept) without a second set of ids held here.
    """
    for lineno, line in tallied_lines(path, tally, progress):
        cols = _columns(tally, lineno, line, 2, f"{id_name}, {text_name}")
        if cols is None:
            continue
        key = _tallied_id(tally, lineno, cols[0], id_name)
        if key is None:
            continue
        if not cols[1].strip():
            tally.skip(lineno, "empty text", f"empty {text_name} ({id_name} {key})")
        elif key in known:
            tally.skip(lineno, "duplicate id", f"duplicate {id_name} {key} (the first is kept)")
        else:
            tally.kept += 1
            yield key, cols[1]


def _read_collection_ids(path: Path, progress: bool) -> tuple[set[int], list[int], FileTally]:
    """First pass over ``collection.tsv``: the valid passage ids, as a set and in file order."""
    tally = FileTally(path)
    ids: set[int] = set()
    order: list[int] = []
    for pid, _ in _id_text_rows(path, tally, progress, ids, "pid", "passage"):
        ids.add(pid)
        order.append(pid)
    return ids, order, tally


def _read_queries(path: Path, progress: bool) -> tuple[dict[int, str], FileTally]:
    tally = FileTally(path)
    queries: dict[int, str] = {}
    for qid, text in _id_text_rows(path, tally, progress, queries, "qid", "query"):
        queries[qid] = " ".join(text.split())
    return queries, tally


def _read_qrels(
    path: Path, queries: dict[int, str], pids: set[int], progress: bool
) -> tuple[dict[int, dict[int, int]], FileTally]:
    """Reads TREC qrels (``qid 0 pid relevance``): query -> judged pid -> relevance, file order."""
    tally = FileTally(path)
    judged: dict[int, dict[int, int]] = {}
    for lineno, line in tallied_lines(path, tally, progress):
        cols = line.split()  # MS MARCO uses tabs, TREC files spaces
        if len(cols) != 4:
            tally.skip(lineno, "wrong column count", f"expected 4 columns (qid 0 pid relevance), got {len(cols)}")
            continue
        qid, pid = _int_id(cols[0]), _int_id(cols[2])
        if qid is None or pid is None:
            bad = cols[0] if qid is None else cols[2]
            tally.skip(lineno, "non-integer id", f"id {short(bad)} is not a non-negative integer")
        elif not _REL_RE.match(cols[3]):
            tally.skip(lineno, "non-integer relevance", f"relevance {short(cols[3])} is not an integer")
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
    for lineno, line in tallied_lines(path, tally, progress):
        cols = _columns(tally, lineno, line, columns, layout)
        if cols is None:
            continue
        qid = _tallied_id(tally, lineno, cols[0], "qid")
        if qid is None or qid not in wanted:
            continue  # the full file has ~400M rows: only the kept queries' rows are checked further
        pid = _tallied_id(tally, lineno, cols[at], "pid")
        if pid is None:
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
    source = check_source("MS MARCO", source, download, folder=True, where=base_url or MSMARCO_BASE_URL)
    if source is not None:
        _msmarco_inputs(source)  # fail on a missing file before creating anything
    settings = {"max_train_samples": max_train_samples, "split_ratio": split_ratio,
                "negatives_per_query": negatives_per_query, "dev_fraction": dev_fraction, "seed": seed}
    with staging(out_dir) as tmp:
        if download:
            base = base_url or MSMARCO_BASE_URL
            base = base if base.endswith("/") else base + "/"
            folder = tmp / ".download"
            folder.mkdir()
            for name, members in MSMARCO_DOWNLOADS:
                fetched = download_file(base + name, folder, progress)
                if members:
                    extract_members(fetched, members, folder, base + name)
                    fetched.unlink()
            labels = {m: f"{base}{name}" + (f" ({m})" if m != name else "")
                      for name, members in MSMARCO_DOWNLOADS for m in (members or (name,))}
            summary = _build_msmarco(folder, tmp, settings, progress, labels)
            summary["source"] = base
            shutil.rmtree(folder)
        else:
            summary = _build_msmarco(source, tmp, settings, progress)
            summary["source"] = str(source)
        write_json(tmp / "prepare.json", summary)
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
        for _, line in tallied_lines(collection, None, progress):
            cols = line.split("\t")
            if len(cols) != 2 or not cols[1].strip():
                continue
            pid = _int_id(cols[0])
            if pid in needed and pid not in texts:
                texts[pid] = " ".join(cols[1].split())
                f.write(json.dumps({"_id": str(pid), "title": "", "text": texts[pid]}, ensure_ascii=False) + "\n")
    used_set = set(used)
    write_jsonl(out / "queries.jsonl", ({"_id": str(q), "text": t} for q, t in queries.items() if q in used_set))
    for split, qids in (("train", train), ("dev", dev)):
        if qids:
            with open(out / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
                f.write("query-id\tcorpus-id\tscore\n")
                for q in qids:
                    f.writelines(f"{q}\t{p}\t{judged[q][p]}\n" for p in positives[q])
        write_jsonl(out / "triplets" / f"{split}.jsonl", (
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


def msmarco_summary_line(s: dict) -> str:
    """The line ``smec prepare msmarco`` prints for :func:`prepare_msmarco`'s summary."""
    bad = sum(f["bad_rows"] for f in s["files"].values())
    neg = s["negatives"]
    return (f"{s['output']}: {s['queries']['train']} train and {s['queries']['dev']} dev queries (triplets), "
            f"{s['passages_written']} passages; negatives: {neg['from_file']} from "
            f"{neg['file'] or 'no file'}, {neg['random']} random; {bad} bad rows skipped (see prepare.json)")
