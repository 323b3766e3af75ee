"""Re-ranking a first stage's candidates with (compressed) dense embeddings.

For corpora too large for exact search (MS MARCO's 8.8M passages), a first stage (BM25,
another retriever) supplies up to ~1000 candidates per query; only the queries and the
distinct candidate passages are encoded, and each query's candidates are re-scored by
inner product of L2-normalised vectors, all of a query's candidates in one product.

Three candidate file formats, told apart by the first line's column count:

* TREC run: ``qid Q0 docid rank score tag`` (6 whitespace-separated columns);
* MS MARCO top1000: ``qid<TAB>pid<TAB>query<TAB>passage`` (4 tab-separated columns);
* pairs: ``qid<TAB>pid`` (2 columns).

The command is strict: a query id absent from ``queries.jsonl``, or a candidate passage
absent from the corpus (or the passage store), stops it with one line naming the candidates
file and line, rather than silently scoring fewer candidates than the first stage gave; a
missing candidate almost always means the candidates and the corpus are from different
collections or versions, which no metric computed afterwards would reveal.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smec_dist.errors import SmecError
from smec_dist.io import atomic_path
from smec_dist.evaluation.metrics import evaluate_run, sorted_docs

logger = logging.getLogger(__name__)

CANDIDATE_FORMATS = {
    "trec": "TREC run (qid Q0 docid rank score tag)",
    "msmarco": "MS MARCO top1000 (qid<TAB>pid<TAB>query<TAB>passage)",
    "pairs": "qid<TAB>pid",
}
#: Cut-offs of the evaluation, and the figures printed (in order).
RERANK_K = (1, 3, 5, 10, 100)
PRINTED = ("nDCG@10", "MRR@10", "Recall@100", "P@10")
RUN_TAG = "smec-rerank"
_ENCODE_CHUNK = 8192  # passages fetched and encoded at a time: bounds the texts held in memory


@dataclass
class Candidates:
    """A first stage's candidates, as read by :func:`load_candidates`.

    Attributes:
        path: The file read.
        format: ``"trec"``, ``"msmarco"`` or ``"pairs"``.
        lists: Query id -> candidate passage ids, both in file order.
        query_texts: Query id -> text (MS MARCO format only, else empty).
        passage_texts: Passage id -> text (MS MARCO format only, else empty).
    """

    path: Path
    format: str
    lists: dict[str, list[str]] = field(repr=False)
    query_texts: dict[str, str] = field(default_factory=dict, repr=False)
    passage_texts: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def n_pairs(self) -> int:
        """The number of (query, passage) candidates."""
        return sum(map(len, self.lists.values()))

    def pids(self) -> list[str]:
        """The distinct candidate passage ids, in order of first appearance."""
        return list(dict.fromkeys(p for pids in self.lists.values() for p in pids))

    def line_of(self, qid: str | None = None, pid: str | None = None) -> int | None:
        """The first line holding this query id and/or passage id (re-reads the file: for
        error messages only, so that no line numbers are kept for millions of pairs)."""
        for lineno, _, q, p, _, _ in _iter_rows(self.path):
            if (qid is None or q == qid) and (pid is None or p == pid):
                return lineno
        return None

    def refuse_unknown(self, kind: str, missing: Sequence[str], source: str) -> None:
        """Raises, naming the first line of ``missing[0]``, when ``missing`` is not empty.

        Args:
            kind: ``"query"`` or ``"passage"``.
            missing: The ids of that kind that ``source`` lacks, in file order.
            source: Where they were looked for, for the message (e.g. ``queries.jsonl``).

        Raises:
            SmecError: ``<file>:<line>: <kind> id '<id>' is not in <source> (N more unknown)``.
        """
        if not missing:
            return
        first = missing[0]
        line = self.line_of(qid=first) if kind == "query" else self.line_of(pid=first)
        at = f"{self.path}:{line}" if line is not None else str(self.path)
        more = f" ({len(missing) - 1} more unknown)" if len(missing) > 1 else ""
        raise SmecError(f"{at}: {kind} id {first!r} is not in {source}{more}")


# --------------------------------------------------------------------------- reading


def _detect(path: Path, lineno: int, line: str) -> str:
    if len(line.split("\t")) == 4:
        return "msmarco"
    n = len(line.split())
    if n == 6:
        return "trec"
    if n == 2:
        return "pairs"
    raise SmecError(
        f"{path}:{lineno}: cannot tell the candidates format from {n} column(s): expected "
        f"{'; '.join(CANDIDATE_FORMATS.values())}"
    )


def _iter_rows(path: Path) -> Iterator[tuple[int, str, str, str, str, str]]:
    """Yields ``(line, format, qid, pid, query text, passage text)`` per non-blank line."""
    from smec_dist.data.lines import iter_lines

    fmt = None
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        if fmt is None:
            fmt = _detect(path, lineno, line)
        detected = f"{CANDIDATE_FORMATS[fmt]}, detected from the first line"
        query = passage = ""
        if fmt == "msmarco":
            cols = line.split("\t")
            if len(cols) != 4:
                raise SmecError(f"{path}:{lineno}: expected 4 tab-separated columns ({detected}), got {len(cols)}")
            qid, pid, query, passage = cols[0].strip(), cols[1].strip(), cols[2].strip(), cols[3].strip()
            if not query:
                raise SmecError(f"{path}:{lineno}: empty query text")
        else:
            cols = line.split()
            want = 6 if fmt == "trec" else 2
            if len(cols) != want:
                raise SmecError(f"{path}:{lineno}: expected {want} columns ({detected}), got {len(cols)}")
            qid, pid = cols[0], cols[2] if fmt == "trec" else cols[1]
            if fmt == "trec":
                try:
                    int(cols[3])
                except ValueError:
                    raise SmecError(f"{path}:{lineno}: rank {cols[3]!r} is not an integer") from None
                try:
                    score = float(cols[4])
                except ValueError:
                    score = float("nan")
                if not math.isfinite(score):
                    raise SmecError(f"{path}:{lineno}: score {cols[4]!r} is not a finite number")
        if not qid or not pid:
            raise SmecError(f"{path}:{lineno}: empty {'query' if not qid else 'passage'} id")
        yield lineno, fmt, qid, pid, query, passage


def load_candidates(path: str | Path) -> Candidates:
    """Reads a candidates file: a TREC run, MS MARCO top1000, or ``qid<TAB>pid`` pairs.

    The format is detected from the first non-blank line's column count, and every other
    line must have the same. Blank lines are skipped.

    Args:
        path: The candidates file.

    Returns:
        The candidates, in file order.

    Raises:
        SmecError: A missing or empty file, a line with the wrong column count, a TREC line
            whose rank or score is not a number, an empty id or query text, a repeated
            (query, passage) pair, or (MS MARCO) a query or passage whose text differs from
            an earlier line's; each naming file and line.
    """
    path = Path(path).expanduser()
    lists: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    query_texts: dict[str, str] = {}
    passage_texts: dict[str, str] = {}
    fmt = None
    for lineno, fmt, qid, pid, query, passage in _iter_rows(path):
        got = seen.setdefault(qid, set())
        if pid in got:
            raise SmecError(f"{path}:{lineno}: passage {pid!r} is listed twice for query {qid!r}")
        got.add(pid)
        lists.setdefault(qid, []).append(pid)
        if fmt == "msmarco":
            for texts, key, text, what in ((query_texts, qid, query, "query"),
                                           (passage_texts, pid, passage, "passage")):
                if texts.setdefault(key, text) != text:
                    raise SmecError(f"{path}:{lineno}: the text of {what} {key!r} differs from an earlier line's")
    if fmt is None:
        raise SmecError(f"{path}: no candidates (the file is empty)")
    cands = Candidates(path, fmt, lists, query_texts, passage_texts)
    logger.debug("%s: %s, %d queries, %d candidates", path, fmt, len(lists), cands.n_pairs)
    return cands


# --------------------------------------------------------------------------- scoring


def _unit_rows(x: np.ndarray) -> np.ndarray:
    # As torch.nn.functional.normalize: a zero vector stays zero instead of becoming NaN.
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def rerank(
    candidates: Candidates | Mapping[str, Sequence[str]],
    query_emb: Mapping[str, np.ndarray],
    doc_emb: Mapping[str, np.ndarray],
) -> dict[str, dict[str, float]]:
    """Re-scores each query's candidates by cosine similarity (inner product of unit vectors).

    Args:
        candidates: :class:`Candidates`, or query id -> candidate passage ids.
        query_emb: Query id -> vector ``(dim,)``.
        doc_emb: Passage id -> vector ``(dim,)``.

    Returns:
        ``{query_id: {passage_id: score}}``, each query's passages best first (ties by id,
        as :func:`smec_dist.evaluation.metrics.sorted_docs` orders them).

    Raises:
        SmecError: A query or passage without an embedding, vectors of different widths,
            or non-finite values.
    """
    lists = candidates.lists if isinstance(candidates, Candidates) else candidates
    run: dict[str, dict[str, float]] = {}
    for qid, pids in lists.items():
        if qid not in query_emb:
            raise SmecError(f"rerank: no embedding for query {qid!r}")
        for pid in pids:
            if pid not in doc_emb:
                raise SmecError(f"rerank: no embedding for passage {pid!r} (a candidate of query {qid!r})")
        if not pids:
            run[qid] = {}
            continue
        q = np.asarray(query_emb[qid], dtype=np.float32).reshape(-1)  # (dim,)
        try:
            docs = np.stack([np.asarray(doc_emb[p], dtype=np.float32).reshape(-1) for p in pids])  # (n_cands, dim)
        except ValueError:
            raise SmecError(f"rerank: the candidates of query {qid!r} have embeddings of different widths") from None
        if docs.shape[1] != q.shape[0]:
            raise SmecError(f"rerank: query {qid!r} has dim {q.shape[0]} but its candidates have dim {docs.shape[1]}")
        scores = _unit_rows(docs) @ _unit_rows(q)  # (n_cands,)
        if not np.isfinite(scores).all():
            raise SmecError(f"rerank: query {qid!r}: its or its candidates' embeddings hold NaN or infinite values")
        run[qid] = dict(sorted_docs(dict(zip(pids, scores.tolist()))))
    return run


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = RUN_TAG) -> Path:
    """Writes a run as TREC lines ``qid Q0 docid rank score tag`` (written to a temporary
    name, then renamed: :func:`smec_dist.io.atomic_path`).

    Raises:
        SmecError: The folder is missing or the file cannot be written.
    """
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise SmecError(f"--output {path}: folder {path.parent} not found")
    try:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for qid, docs in run.items():
                for rank, (pid, score) in enumerate(sorted_docs(docs), 1):
                    f.write(f"{qid} Q0 {pid} {rank} {score:.6f} {tag}\n")
    except OSError as exc:
        raise SmecError(f"--output {path}: cannot write ({exc.strerror or exc})") from None
    return path


# --------------------------------------------------------------------------- the command


def _encode_passages(encoder, pids: list[str], text_of: Callable[[list[str]], list[str]], compress,
                     batch_size: int, progress: bool) -> np.ndarray:
    """Encodes passages a chunk at a time (texts fetched per chunk) into ``(n, dim)``."""
    from tqdm.auto import tqdm

    out = None
    bar = tqdm(total=len(pids), desc="passages", unit="text", disable=not progress, mininterval=2.0)
    for start in range(0, len(pids), _ENCODE_CHUNK):
        chunk = pids[start:start + _ENCODE_CHUNK]
        emb = compress(encoder.encode(text_of(chunk), batch_size=batch_size, progress=False))  # (chunk, dim)
        if out is None:
            out = np.empty((len(pids), emb.shape[1]), dtype=np.float32)  # (n_passages, dim)
        out[start:start + len(chunk)] = emb
        bar.update(len(chunk))
    bar.close()
    return out


def _passage_source(store: str | Path | None, cands: Candidates, pids: list[str], root: Path,
                    closing: ExitStack) -> Callable[[list[str]], list[str]]:
    """The function giving a chunk of candidate passages' texts, after checking that every
    candidate has one: from ``store``, else an MS MARCO file's own texts, else the corpus."""
    from smec_dist.data.beir import doc_text, load_corpus

    if store:
        from smec_dist.data.store import PassageStore

        opened = closing.enter_context(PassageStore(store))
        cands.refuse_unknown("passage", opened.missing(pids), opened.path)
        return opened.texts
    if cands.format == "msmarco":
        return lambda chunk: [cands.passage_texts[p] for p in chunk]
    corpus = load_corpus(root / "corpus.jsonl")
    cands.refuse_unknown("passage", [p for p in pids if p not in corpus], root / "corpus.jsonl")
    return lambda chunk: [doc_text(corpus[p]) for p in chunk]


def rerank_candidates(
    candidates: str | Path,
    dataset: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str = "test",
    model: str = "minilm",
    head: str | Path | None = None,
    dim: int | None = None,
    store: str | Path | None = None,
    output: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> str:
    """``smec rerank``: encode, re-rank, write the run, evaluate; returns the lines to print.

    Query texts come from the dataset's ``queries.jsonl``; passage texts from ``store`` when
    given, else from an MS MARCO top1000 file itself, else from the dataset's
    ``corpus.jsonl``. Unknown ids are errors (see the module docstring).

    Args:
        candidates: The candidates file (TREC run, MS MARCO top1000, or qid<TAB>pid pairs).
        dataset: A BEIR folder, or a dataset name under ``data_dir``.
        data_dir: Where named datasets live; None: ``data.data_dir``'s default
            (``$SMEC_DATA_DIR``).
        split: The qrels split to evaluate when the dataset has it.
        model: The encoder (alias, folder or hub id).
        head: A trained head ``.safetensors`` to compress with (needs ``dim``).
        dim: The head's output dim.
        store: A passage store (``smec store build``) to take passage texts from.
        output: The TREC run to write; None: ``<candidates stem>.rerank.tsv`` here.
        batch_size: Texts per encoder batch.
        progress: Show progress bars.

    Raises:
        SmecError: Inconsistent arguments, unknown ids, unreadable inputs, an unwritable run.
    """
    from smec_dist.backbone import load_encoder
    from smec_dist.config import DataConfig
    from smec_dist.data.beir import load_qrels, load_queries
    from smec_dist.data.download import ensure_dataset

    if dim is not None and not head:
        raise SmecError("--dim needs --head (the head that compresses to that dim)")
    if head and dim is None:
        raise SmecError("--head needs --dim (one of the head's dims)")
    if batch_size < 1:
        raise SmecError(f"--batch-size must be a positive integer, got {batch_size}")
    cands = load_candidates(candidates)
    out = Path(output or f"{cands.path.stem}.rerank.tsv").expanduser()
    if not out.parent.is_dir():
        raise SmecError(f"--output {out}: folder {out.parent} not found")
    root = ensure_dataset(dataset, data_dir or DataConfig().data_dir)
    queries = load_queries(root / "queries.jsonl")
    qids = list(cands.lists)
    cands.refuse_unknown("query", [q for q in qids if q not in queries], root / "queries.jsonl")
    qrels_path = root / "qrels" / f"{split}.tsv"
    qrels = load_qrels(qrels_path, queries) if qrels_path.is_file() else None

    compressor = None
    if head:
        from smec_dist.method.export import CompressedModel

        compressor = CompressedModel.load(head)
        if dim not in compressor.dims and dim != compressor.head.full_dim:
            raise SmecError(f"--dim {dim} is not one of {head}'s dims {compressor.dims}")

    pids = cands.pids()
    with ExitStack() as closing:
        text_of = _passage_source(store, cands, pids, root, closing)
        encoder = load_encoder(model)
        if compressor is not None and encoder.dim != compressor.head.full_dim:
            raise SmecError(f"--head {head}: made for width {compressor.head.full_dim}, but --model {model} "
                            f"gives {encoder.dim}")

        def compress(x: np.ndarray) -> np.ndarray:
            return compressor.compress(x, dim) if compressor is not None else x

        start = time.perf_counter()
        q_emb = compress(encoder.encode([queries[q] for q in qids], batch_size=batch_size,
                                        progress=progress, desc="queries"))  # (n_queries, dim)
        d_emb = _encode_passages(encoder, pids, text_of, compress, batch_size, progress)  # (n_passages, dim)
        encode_s = time.perf_counter() - start

    start = time.perf_counter()
    run = rerank(cands, dict(zip(qids, q_emb)), dict(zip(pids, d_emb)))
    ms_per_query = 1000 * (time.perf_counter() - start) / max(len(run), 1)
    write_trec_run(run, out)

    width = f"dim {dim} ({Path(head).name})" if compressor is not None else f"dim {q_emb.shape[1]}"
    lines = [
        f"{cands.path} ({cands.format}): {len(qids)} queries, {cands.n_pairs} candidates, "
        f"{len(pids)} distinct passages",
        f"run: {out} ({model}, {width}; encoding {encode_s:.1f} s)",
    ]
    if qrels is None:
        lines.append(f"{qrels_path}: not found, so no metrics")
    else:
        scores = evaluate_run(qrels, run, k_values=RERANK_K)
        without = sum(q not in run for q in qrels)
        note = f"; {without} judged queries without candidates count 0" if without else ""
        lines.append(f"{split} ({len(qrels)} queries{note}): "
                     + "  ".join(f"{name} {scores[name]:.4f}" for name in PRINTED))
    lines.append(f"re-ranking: {ms_per_query:.3f} ms/query")
    return "\n".join(lines)
