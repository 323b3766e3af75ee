"""Search benchmark: index size, query latency and quality for each (method, dim, code type).

For every compression method (trained heads given with ``--head``; truncation and uncentred
PCA as references; the uncompressed backbone as ``full``), every dim and every code type, the
compressed corpus is put in a FAISS index, all evaluation queries are searched in one batch
(k=100, exhaustive: the only approximation is the code), and the script reports

* bytes/doc: the code size FAISS stores per document (``index.code_size``: 4d fp32, 2d fp16,
  d int8, d/8 binary) and the real index size (``faiss.serialize_index``) divided by n_docs;
* ms/query: the median over ``--repeats`` batch searches divided by the number of queries, with
  one FAISS thread and with the default number (``faiss.omp_get_max_threads()``);
* nDCG@10 and Recall@100 (:func:`smec_dist.evaluation.metrics.evaluate_run`, all queries of the
  eval split's qrels).

Code types:

* ``fp32``: ``IndexFlatIP``.
* ``fp16``: ``IndexScalarQuantizer(QT_fp16)``, inner product: 2 bytes per value stored.
* ``int8``: ``IndexScalarQuantizer(QT_8bit)``, inner product; per-dim min/max trained on the
  compressed corpus. Queries stay float (asymmetric distance).
* ``binary``: sign bits in ``IndexBinaryFlat``, queries binarised too, Hamming distance.
* ``binary+rescore``: the binary index's top ``--rescore-factor`` x k by Hamming, re-ranked by
  the float query's inner product with the candidates' +-1 codes. It reads only the binary
  codes (no float copy of the corpus), so it has the binary index's size; the re-ranking
  (numpy, one lookup table of 256 entries per query byte) is inside the timed search.

A dim that is not a multiple of 8 is binarised with zero padding bits up to the next whole
byte (ceil(d/8) bytes per doc); the pad bits are equal in every code, so Hamming distances and
rankings are those of the d real bits.

Command (SciFact / MiniLM, the heads of ``smec compare``; 24-32 s on 2 idle cores)::

    SMEC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 .venv/bin/python -m bench.search \\
        --head runs/scifact-minilm-compare/models/supervised/smec.safetensors \\
        --head runs/scifact-minilm-compare/models/unsupervised-queries/smec.safetensors

Writes ``bench/results/search.json`` (``--json-out``) and ``bench/results/search.png``
(``--plot-out``: nDCG@10 against bytes/doc, log x, one colour per method, one marker per code).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from bench.common import print_results
from smec_dist.errors import SmecError
from smec_dist.evaluation.metrics import evaluate_run
from smec_dist.evaluation.search import to_run

CODES: tuple[str, ...] = ("fp32", "fp16", "int8", "binary", "binary+rescore")
DIMS: tuple[int, ...] = (384, 192, 96, 48, 24)
DEFAULT_HEAD = "runs/scifact-minilm-compare/models/supervised/smec.safetensors"
DEFAULT_CACHE = "runs/cache/scifact-minilm-float32"
K_VALUES: tuple[int, ...] = (10, 100)
PLOT_METRIC = "nDCG@10"

#: FAISS's default thread count, read before this module changes it.
DEFAULT_THREADS = faiss.omp_get_max_threads()

Index = Any  # faiss.Index or faiss.IndexBinary (the SWIG classes have no common base)


# --------------------------------------------------------------------------- codes and indexes


def code_bytes(code: str, dim: int) -> int:
    """Bytes one document's code takes in the index: 4d, 2d, d or ceil(d/8)."""
    if code not in CODES:
        raise SmecError(f"code '{code}' is not one of {', '.join(CODES)}")
    return {"fp32": 4 * dim, "fp16": 2 * dim, "int8": dim}.get(code, -(-dim // 8))


def sign_bits(x: np.ndarray) -> np.ndarray:
    """Sign bits packed as FAISS binary codes: (n, d) float -> (n, ceil(d/8)) uint8.

    Bit ``i`` of byte ``j`` is dim ``8j + i`` (FAISS's ``fvecs2bitvecs`` order); pad bits are 0.
    """
    return np.packbits(np.asarray(x) > 0, axis=1, bitorder="little")  # (n, ceil(d/8))


def build_index(code: str, docs: np.ndarray) -> Index:
    """An exhaustive FAISS index of ``docs`` (n, d) storing ``code`` codes, scored by inner
    product (Hamming distance for the binary codes)."""
    docs = np.ascontiguousarray(docs, dtype=np.float32)
    d = docs.shape[1]
    if code == "fp32":
        index = faiss.IndexFlatIP(d)
    elif code in ("fp16", "int8"):
        qtype = faiss.ScalarQuantizer.QT_fp16 if code == "fp16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_INNER_PRODUCT)
        index.train(docs)  # int8: per-dim min/max of the corpus codes; fp16: a no-op
    elif code in ("binary", "binary+rescore"):
        index = faiss.IndexBinaryFlat(8 * code_bytes(code, d))
        index.add(sign_bits(docs))
        return index
    else:
        raise SmecError(f"code '{code}' is not one of {', '.join(CODES)}")
    index.add(docs)
    return index


def index_bytes(index: Index) -> int:
    """The index's serialised size in bytes (codes plus header and trained parameters)."""
    if isinstance(index, faiss.IndexBinary):
        return int(faiss.serialize_index_binary(index).size)
    return int(faiss.serialize_index(index).size)


def _sign_table(n_bits: int = 8) -> np.ndarray:
    """(8, 256): entry [i, v] is +1 where bit i of byte v is set, else -1."""
    v = np.arange(256)
    return np.stack([((v >> i) & 1) * 2.0 - 1.0 for i in range(n_bits)]).astype(np.float32)


_SIGNS = _sign_table()


def rescore_binary(index: Index, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank binary candidates by the float query's inner product with their +-1 codes.

    The dot product of a query with a code is summed byte by byte from a per-query table
    (one entry per byte position and byte value), as product quantisation does, so the
    candidates are never unpacked to floats.

    Args:
        index: The ``IndexBinaryFlat`` the candidates came from (its codes are read back).
        queries: (n_q, d) float queries.
        candidates: (n_q, c) candidate rows, best Hamming first; -1 for none.
        k: Results kept per query (at most c).

    Returns:
        ``(scores, indices)`` of shape (n_q, k), best first.
    """
    nq, d = queries.shape
    nbytes = index.code_size
    codes = faiss.vector_to_array(index.xb).reshape(index.ntotal, nbytes)  # (n_docs, nbytes)
    q = np.zeros((nq, nbytes * 8), dtype=np.float32)
    q[:, :d] = queries  # pad dims weigh 0
    table = q.reshape(nq, nbytes, 8) @ _SIGNS  # (n_q, nbytes, 256)
    cand = np.where(candidates >= 0, candidates, 0)
    cand_codes = codes[cand]  # (n_q, c, nbytes)
    rows = np.arange(nq)[:, None, None]
    cols = np.arange(nbytes)[None, None, :]
    scores = table[rows, cols, cand_codes].sum(-1)  # (n_q, c)
    scores[candidates < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (n_q, k)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)


def search(index: Index, code: str, queries: np.ndarray, k: int,
           rescore_factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Batch search of all ``queries`` (n_q, d): ``(scores, indices)`` (n_q, k), best first.

    Binary scores are the +-1 inner product over the d real bits, ``d - 2 * hamming``, so
    every code type returns "higher is better" scores.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    if code == "binary":
        hamming, indices = index.search(sign_bits(queries), k)
        return queries.shape[1] - 2.0 * hamming.astype(np.float32), indices
    if code == "binary+rescore":
        _, candidates = index.search(sign_bits(queries), min(index.ntotal, rescore_factor * k))
        return rescore_binary(index, queries, candidates, k)
    return index.search(queries, k)


def time_search(fn: Callable[[], object], repeats: int, threads: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs with ``threads`` FAISS threads."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        fn()  # warm-up: first-touch of the codes, BLAS and OpenMP thread pools
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(before)
    return float(np.median(times))


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    """A way to compress (n, D) L2-normalised embeddings to (n, d) L2-normalised ones.

    Attributes:
        name: Label in the table and the plot.
        compress: ``(x, d) -> (n, d)`` float32 numpy.
        dims: The dims it offers (``None``: any dim up to the full width).
        path: The head file, for heads.
        full_dim: The input width D it needs (``None``: any).
    """

    name: str
    compress: Callable[[torch.Tensor, int], np.ndarray]
    dims: tuple[int, ...] | None = None
    path: str | None = None
    full_dim: int | None = None


def reference_methods(corpus: torch.Tensor) -> list[Method]:
    """Truncation and uncentred corpus PCA, the baselines of ``smec compare``."""
    from smec_dist.method.transform import pca_basis

    basis = pca_basis(corpus)  # (D, D), rows by decreasing energy
    return [
        Method("truncation", lambda x, d: F.normalize(x[:, :d], dim=-1).numpy()),
        Method("pca", lambda x, d: F.normalize(x @ basis[:d].T, dim=-1).numpy()),
    ]


def head_method(path: str | os.PathLike, name: str | None = None) -> Method:
    """A saved head (``smec_dist.method.export.save_head``) as a method named ``<file stem>[<folder>]``."""
    from smec_dist.method.export import CompressedModel

    model = CompressedModel.load(path)  # SmecError, one line, when missing or unreadable
    path = Path(path)
    return Method(name or f"{path.stem}[{path.parent.name}]",
                  lambda x, d: model.compress(x, d).numpy(), tuple(model.dims), str(path), model.head.full_dim)


def check_dims(methods: Sequence[Method], dims: Sequence[int], full_dim: int) -> None:
    """Every head must take width ``full_dim`` and offer every requested dim below it."""
    for m in methods:
        if m.full_dim is not None and m.full_dim != full_dim:
            raise SmecError(f"head {m.path or m.name} takes {m.full_dim}-dim embeddings, "
                            f"the embeddings are {full_dim}-dim")
    if not dims:
        raise SmecError("--dims: at least one dim is needed")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= full_dim:
            raise SmecError(f"--dims: {d!r} is not a dim between 1 and the backbone width {full_dim}")
        for m in methods:
            if d < full_dim and m.dims is not None and d not in m.dims:
                raise SmecError(f"--dims: {d} is not a dim of head {m.path or m.name} "
                                f"(its dims: {', '.join(map(str, m.dims))})")


# --------------------------------------------------------------------------- the benchmark


def run_benchmark(
    corpus: np.ndarray,
    queries: np.ndarray,
    doc_ids: Sequence[str],
    query_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    methods: Sequence[Method],
    dims: Sequence[int] = DIMS,
    codes: Sequence[str] = CODES,
    k: int = 100,
    repeats: int = 5,
    threads: Sequence[int] | None = None,
    rescore_factor: int = 4,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Index, search and score every (method, dim, code).

    The full width is benchmarked once, as method ``full`` (the normalised backbone
    embeddings): every head, truncation and PCA are the backbone itself (or a rotation of it)
    at full width. Methods are run at the dims below the full width.

    Args:
        corpus: (n_docs, D) backbone embeddings (normalised here).
        queries: (n_q, D) backbone embeddings of the queries to search, row i is ``query_ids[i]``.
        doc_ids: Row i of ``corpus`` is ``doc_ids[i]``.
        query_ids: Query ids.
        qrels: The eval qrels (queries absent from ``query_ids`` count 0, as in
            :func:`evaluate_run`).
        methods: The compressors, e.g. :func:`head_method` and :func:`reference_methods`.
        dims: Dims to run; the full width D only for ``full``.
        codes: Code types, a subset of :data:`CODES`.
        k: Results per query (clipped to n_docs).
        repeats: Timed batch searches per thread count (the median is reported).
        threads: FAISS thread counts to time; default 1 and :data:`DEFAULT_THREADS`.
        rescore_factor: ``binary+rescore`` re-ranks this many times k Hamming candidates.
        log: Called with one line per finished row (progress).

    Returns:
        ``{"meta": {...}, "rows": [{"method", "dim", "code", "bytes/doc", "index bytes/doc",
        "ms/query": {threads: ms}, "metrics": {name: value}}, ...]}``.

    Raises:
        SmecError: On a shape mismatch, an unknown code, or a dim no method can give.
    """
    for code in codes:
        code_bytes(code, 1)  # unknown code -> SmecError
    if repeats < 1 or k < 1 or rescore_factor < 1:
        raise SmecError(f"repeats, k and rescore_factor must be positive, got {repeats}, {k}, {rescore_factor}")
    x_docs = F.normalize(torch.as_tensor(np.asarray(corpus, dtype=np.float32)), dim=-1)  # (n_docs, D)
    x_q = F.normalize(torch.as_tensor(np.asarray(queries, dtype=np.float32)), dim=-1)  # (n_q, D)
    full_dim = x_docs.shape[1]
    if x_q.shape[1] != full_dim or len(doc_ids) != len(x_docs) or len(query_ids) != len(x_q):
        raise SmecError(f"corpus {tuple(x_docs.shape)} / queries {tuple(x_q.shape)} do not match "
                        f"{len(doc_ids)} doc ids / {len(query_ids)} query ids")
    check_dims(methods, dims, full_dim)
    threads = sorted(set(threads or (1, DEFAULT_THREADS)))
    full = Method("full", lambda x, d: x.numpy())
    plan = [(full, full_dim)] if full_dim in dims else []
    plan += [(m, d) for m in methods for d in dims if d < full_dim]

    rows = []
    with torch.no_grad():
        for method, dim in plan:
            docs = np.ascontiguousarray(method.compress(x_docs, dim), dtype=np.float32)  # (n_docs, dim)
            qs = np.ascontiguousarray(method.compress(x_q, dim), dtype=np.float32)  # (n_q, dim)
            for code in codes:
                index = build_index(code, docs)
                scores, indices = search(index, code, qs, k, rescore_factor)
                metrics = evaluate_run(qrels, to_run(query_ids, doc_ids, scores, indices), K_VALUES)
                ms = {str(t): 1000.0 * time_search(lambda: search(index, code, qs, k, rescore_factor),
                                                   repeats, t) / len(qs)
                      for t in threads}
                row = {"method": method.name, "dim": dim, "code": code,
                       "bytes/doc": int(index.code_size),
                       "index bytes/doc": index_bytes(index) / len(docs),
                       "ms/query": ms, "metrics": metrics}
                rows.append(row)
                if log:
                    log(format_row(row, threads))
    meta = {"n_docs": len(doc_ids), "n_queries": len(query_ids), "n_qrels_queries": len(qrels),
            "full_dim": full_dim, "dims": list(dims), "codes": list(codes), "k": k, "repeats": repeats,
            "threads": threads, "rescore_factor": rescore_factor, "faiss": faiss.__version__,
            "methods": {m.name: m.path for m in methods}}
    return {"meta": meta, "rows": rows}


# --------------------------------------------------------------------------- output


_COLUMNS = ("method", "dim", "code", "bytes/doc", "index B/doc")


def _cells(row: Mapping[str, Any], threads: Sequence[int]) -> list[str]:
    cells = [row["method"], str(row["dim"]), row["code"], str(row["bytes/doc"]), f"{row['index bytes/doc']:.1f}"]
    cells += [f"{row['ms/query'][str(t)]:.4f}" for t in threads]
    return cells + [f"{row['metrics']['nDCG@10']:.4f}", f"{row['metrics']['Recall@100']:.4f}"]


def format_row(row: Mapping[str, Any], threads: Sequence[int]) -> str:
    """One row as a line (the progress output)."""
    return "  ".join(_cells(row, threads))


def format_table(results: Mapping[str, Any]) -> str:
    """The rows as an aligned plain-text table (ms/query per FAISS thread count)."""
    threads = results["meta"]["threads"]
    header = [*_COLUMNS, *(f"ms/q {t}t" for t in threads), "nDCG@10", "R@100"]
    rows = [_cells(r, threads) for r in results["rows"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), *(line(r) for r in rows)])


def plot(results: Mapping[str, Any], path: str | os.PathLike, metric: str = PLOT_METRIC) -> Path:
    """``metric`` against bytes/doc (log2 x): colour = method, marker = code, points labelled by dim.

    Points of one (method, code) are joined across dims, so each line is one method's
    size/quality curve for one code type; the object API with the Agg canvas leaves pyplot's
    global state alone (as :mod:`smec_dist.report` does).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    rows = results["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    codes = list(dict.fromkeys(r["code"] for r in rows))
    colour = {m: ("black" if m == "full" else f"C{i % 10}") for i, m in enumerate(methods)}
    markers = "os^vDP*Xph"
    marker = {c: markers[i % len(markers)] for i, c in enumerate(codes)}

    fig = Figure(figsize=(9.5, 6.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for m in methods:
        for c in codes:
            pts = sorted((r["bytes/doc"], r["metrics"][metric], r["dim"]) for r in rows
                         if r["method"] == m and r["code"] == c)
            if not pts:
                continue
            xs, ys, ds = zip(*pts)
            ax.plot(xs, ys, color=colour[m], marker=marker[c], linewidth=0.8, alpha=0.85, markersize=6)
            for x, y, d in pts:
                ax.annotate(str(d), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6,
                            color=colour[m])
    ticks = sorted({r["bytes/doc"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks], fontsize="small")
    ax.set_xlabel("bytes per document (code size, log scale)")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    meta = results["meta"]
    ax.set_title(f"{metric} vs. index bytes/doc: {meta.get('dataset', '')} "
                 f"({meta['n_docs']} docs), labels = dim")
    by_method = [Line2D([], [], color=colour[m], linewidth=2, label=m) for m in methods]
    by_code = [Line2D([], [], color="grey", marker=marker[c], linestyle="none", label=c) for c in codes]
    first = ax.legend(handles=by_method, title="method", loc="lower right", fontsize="small")
    ax.add_artist(first)
    ax.legend(handles=by_code, title="code", loc="upper left", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--head", action="append", default=None,
                   help=f"a saved head (repeatable; default {DEFAULT_HEAD})")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="the embedding cache (parts corpus, queries)")
    p.add_argument("--dataset", default="scifact", help="BEIR dataset name or folder (for the qrels)")
    p.add_argument("--data-dir", default=os.environ.get("SMEC_DATA_DIR", "data"))
    p.add_argument("--split", default="test", help="eval split (qrels/<split>.tsv)")
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    p.add_argument("--codes", nargs="+", default=list(CODES), choices=CODES)
    p.add_argument("--no-references", action="store_true", help="skip truncation and PCA")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5, help="timed batch searches per thread count")
    p.add_argument("--rescore-factor", type=int, default=4)
    p.add_argument("--json-out", default="bench/results/search.json")
    p.add_argument("--plot-out", default="bench/results/search.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from smec_dist.cache import load_cache
        from smec_dist.data import ensure_dataset, eval_qrels, load_beir

        methods = [head_method(h) for h in (args.head or [DEFAULT_HEAD])]  # bad head: fail before loading data
        names = [m.name for m in methods]
        if len(set(names)) < len(names):
            raise SmecError(f"--head: two heads get the same label ({', '.join(names)}); "
                            f"use files with different names or folders")
        check_dims(methods, args.dims, methods[0].full_dim)  # before the (slow) loading
        cache = load_cache(args.cache)
        check_dims(methods, args.dims, cache.dim)
        ds = load_beir(ensure_dataset(args.dataset, args.data_dir))
        qrels = eval_qrels(ds, args.split)
        query_ids = cache.ids("queries")
        keep = [i for i, q in enumerate(query_ids) if q in qrels]
        if not keep:
            raise SmecError(f"{args.cache}: none of its queries is in {ds.root}/qrels/{args.split}.tsv")
        corpus = cache.embeddings("corpus")
        queries = cache.embeddings("queries")[keep]  # (n_eval, D)
        if not args.no_references:
            methods += reference_methods(F.normalize(torch.from_numpy(corpus), dim=-1))
        load_before = os.getloadavg()
        print(f"loadavg before: {', '.join(f'{x:.2f}' for x in load_before)}  "
              f"(cpus {os.cpu_count()}, faiss threads 1 and {DEFAULT_THREADS})", flush=True)
        t = time.perf_counter()
        results = run_benchmark(corpus, queries, cache.ids("corpus"), [query_ids[i] for i in keep], qrels,
                                methods, args.dims, args.codes, args.k, args.repeats,
                                rescore_factor=args.rescore_factor, log=lambda s: print(s, flush=True))
        results["meta"].update(dataset=ds.name, split=args.split, cache=str(args.cache),
                               loadavg_before=list(load_before), loadavg_after=list(os.getloadavg()),
                               cpus=os.cpu_count(), seconds=round(time.perf_counter() - t, 1))
        print_results(format_table(results), results, args.json_out)
        print(f"plot: {plot(results, args.plot_out)}")
    except SmecError as exc:
        print(f"bench.search: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
