"""The domain-shift run: per-domain adapters behind an LRU cache vs one shared adapter.

A sequence such as ``A,B,C,A`` visits domains in turn (A = the first of ``domains``, ...).

* **AdapterCache** (K = ``capacity``): a visit makes the domain's adapter active (hit, or
  miss: load from disk / create, evicting the least recently used); the first visit trains
  the new adapter (:func:`~smec_dist.adapters.train_adapter`, InfoNCE on the domain's pairs)
  and saves it; every visit measures the domain's quality. The evaluation encodes in
  requests of :data:`REQUEST_TEXTS` texts and each request asks the cache for the domain
  first, as a server would; hence the request-level hit rate beside the per-visit events.
* **Shared adapter** (no cache): one adapter trained on A, then B, then C (the same steps
  and batches as the cache's adapters); each revisited domain (A) is measured again at the
  end: forgetting. It starts
  as a copy of the cache's A adapter (the same weights as training it afresh with the same
  seed), so both arms share the post-A quality and differ only in what follows.
* **Base model**, adapters disabled, for reference.

Retention of a domain = its quality on its last visit / its quality right after training.

Domains (quality metric): ``scifact`` (train qrels -> pairs; nDCG@10 of the test queries
against all judged test docs plus ``scifact_docs`` seeded random docs, a subset to keep CPU
time small), ``cranfield`` (test qrels only: a seeded half of the judged queries gives the
training pairs, the other half is evaluated, nDCG@10 over the full corpus), ``stsb`` (train
pairs scored >= 4.0 as positives; Spearman of cosines on the test split).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .adapters import AdapterCache, stats_markdown, train_adapter
from .backbone import Encoder, load_trainable
from .data import doc_text, load_beir, load_sts_dir
from .errors import SmecError
from .evaluation.metrics import evaluate_run
from .evaluation.search import search_run
from .evaluation.sts import cosine_spearman

log = logging.getLogger(__name__)

DOMAINS = ("scifact", "cranfield", "stsb")
REQUEST_TEXTS = 128  # texts per encode request during evaluation (each request asks the cache)
STS_POSITIVE = 4.0

EncodeFn = Callable[[list[str], str], np.ndarray]  # (texts, what) -> (n, D)


@dataclass
class Domain:
    """One domain: training pairs and a quality measure.

    Attributes:
        name: ``scifact``, ``cranfield`` or ``stsb``.
        metric: the quality's name (``nDCG@10``, ``Spearman``).
        pairs: (query, positive) training texts.
        evaluate: quality of an encoder, given as ``encode(texts, what)``.
        note: how the split and evaluation were made (for the report).
    """

    name: str
    metric: str
    pairs: list[tuple[str, str]]
    evaluate: Callable[[EncodeFn], float]
    note: str


def _retrieval_eval(doc_ids: list[str], docs: list[str], query_ids: list[str], queries: list[str],
                    qrels: dict) -> Callable[[EncodeFn], float]:
    def evaluate(encode: EncodeFn) -> float:
        d = encode(docs, "docs")  # (n_docs, D)
        q = encode(queries, "queries")  # (n_queries, D)
        run = search_run(d, doc_ids, q, query_ids, k=10, use_gpu="no")
        return evaluate_run(qrels, run, k_values=(10,))["nDCG@10"]

    return evaluate


def _judged(qrels: dict, queries: dict) -> dict[str, list[str]]:
    return {q: [d for d, s in judged.items() if s > 0] for q, judged in qrels.items()
            if q in queries and any(s > 0 for s in judged.values())}


def load_domain(name: str, data_dir: Path, seed: int = 0, scifact_docs: int = 1000) -> Domain:
    """Build a domain's training pairs and quality measure (see the module docstring)."""
    data_dir = Path(data_dir)
    rng = random.Random(seed)
    if name == "scifact":
        ds = load_beir(data_dir / "scifact", splits=["train", "test"])
        if "train" not in ds.qrels:
            raise SmecError(f"{ds.root}: scifact needs qrels/train.tsv for its training pairs")
        pairs = [(ds.queries[q], doc_text(ds.corpus[d]))
                 for q, docs in _judged(ds.qrels["train"], ds.queries).items() for d in docs]
        test = _judged(ds.qrels["test"], ds.queries)
        judged = sorted({d for docs in test.values() for d in docs})
        rest = sorted(set(ds.corpus) - set(judged))
        extra = rng.sample(rest, min(scifact_docs, len(rest)))
        doc_ids = [d for d in ds.corpus if d in set(judged) | set(extra)]  # corpus order
        qids = list(test)
        qrels = {q: {d: 1 for d in test[q]} for q in qids}
        note = (f"{len(pairs)} train pairs; test: {len(qids)} queries vs {len(doc_ids)} docs "
                f"(all {len(judged)} judged + {len(extra)} random of {len(ds.corpus)}, seed {seed})")
        return Domain(name, "nDCG@10", pairs, _retrieval_eval(
            doc_ids, [doc_text(ds.corpus[d]) for d in doc_ids], qids, [ds.queries[q] for q in qids], qrels), note)
    if name == "cranfield":
        ds = load_beir(data_dir / "cranfield", splits=["test"])
        judged = _judged(ds.qrels["test"], ds.queries)
        qids = sorted(judged)
        rng.shuffle(qids)
        train_q, eval_q = sorted(qids[: len(qids) // 2]), sorted(qids[len(qids) // 2:])
        pairs = [(ds.queries[q], doc_text(ds.corpus[d])) for q in train_q for d in judged[q]]
        qrels = {q: ds.qrels["test"][q] for q in eval_q}
        note = (f"seeded half of the {len(qids)} judged test queries for training ({len(train_q)} queries, "
                f"{len(pairs)} pairs); the other {len(eval_q)} evaluated vs all {len(ds.corpus)} docs")
        return Domain(name, "nDCG@10", pairs, _retrieval_eval(
            ds.doc_ids(), ds.doc_texts(), eval_q, [ds.queries[q] for q in eval_q], qrels), note)
    if name == "stsb":
        train, test = load_sts_dir(data_dir / "stsb", "train"), load_sts_dir(data_dir / "stsb", "test")
        pairs = [(p.s1, p.s2) for p in train if p.score >= STS_POSITIVE]

        def evaluate(encode: EncodeFn) -> float:
            a = encode([p.s1 for p in test], "sentence1")  # (n, D)
            b = encode([p.s2 for p in test], "sentence2")  # (n, D)
            return cosine_spearman(a, b, [p.score for p in test])

        note = f"{len(pairs)} train pairs with score >= {STS_POSITIVE}; Spearman on the {len(test)} test pairs"
        return Domain(name, "Spearman", pairs, evaluate, note)
    raise SmecError(f"domain '{name}': not one of {', '.join(DOMAINS)}")


def parse_sequence(sequence: str | Sequence[str], domains: Sequence[str]) -> list[str]:
    """``A,B,C,A`` (letters index ``domains``) or domain names -> the domain of each visit."""
    items = [s.strip() for s in (sequence.split(",") if isinstance(sequence, str) else sequence) if s.strip()]
    if not items:
        raise SmecError("adapters --sequence: empty (e.g. A,B,C,A)")
    out = []
    for item in items:
        if item in domains:
            out.append(item)
        elif len(item) == 1 and item.isalpha() and ord(item.upper()) - ord("A") < len(domains):
            out.append(domains[ord(item.upper()) - ord("A")])
        else:
            letters = ", ".join(f"{chr(65 + i)}={d}" for i, d in enumerate(domains))
            raise SmecError(f"adapters --sequence: '{item}' is neither a letter ({letters}) nor a domain name")
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_domain_shift(domains: Sequence[str] = DOMAINS, sequence: str = "A,B,C,A", capacity: int = 2,
                     steps: int = 20, lr: float = 1e-3, batch_size: int = 16,
                     out_dir: str | os.PathLike = "runs/adapters",
                     data_dir: str | os.PathLike | None = None, model: str = "minilm", lora_r: int = 8,
                     train_max_length: int = 64, eval_max_length: int = 128, scifact_docs: int = 500,
                     seed: int = 0, progress: bool = True, command: str | None = None) -> dict:
    """Run the three arms (see the module docstring); write ``results.json`` and ``report.md``.

    The defaults are sized for a few minutes on 2 CPU cores: short training (``steps`` x
    ``batch_size`` pairs, texts cut to ``train_max_length`` tokens), evaluation at
    ``eval_max_length`` tokens, SciFact on a corpus subset.

    Args:
        domains: the domains the sequence's letters name (A = the first).
        sequence: visits, as letters or domain names.
        capacity: K of the cache.
        steps / lr / batch_size: training of each new adapter (and of the shared one per domain).
        out_dir: gets ``results.json``, ``report.md`` and ``adapters/<domain>/`` (emptied first).
        data_dir: holds ``scifact/``, ``cranfield/``, ``stsb/`` (default ``$SMEC_DATA_DIR``).
        model: the backbone alias or folder; LoRA of rank ``lora_r`` on all linear layers.
        scifact_docs: random SciFact docs added to the judged test docs for evaluation.

    Returns:
        The results dict (also in ``out_dir/results.json``).
    """
    started = time.perf_counter()
    domains = [d.strip() for d in domains if d.strip()]
    for d in domains:
        if d not in DOMAINS:
            raise SmecError(f"adapters --domains: '{d}' is not one of {', '.join(DOMAINS)}")
    if len(set(domains)) != len(domains):
        raise SmecError(f"adapters --domains: a domain is named twice ({','.join(domains)})")
    visits = parse_sequence(sequence, domains)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise SmecError(f"adapters --capacity must be an integer >= 1, got {capacity!r}")
    if steps < 1 or not lr > 0 or batch_size < 2 or lora_r < 1 or scifact_docs < 0:
        raise SmecError(f"adapters: need --steps >= 1 ({steps}), --lr > 0 ({lr}), --batch-size >= 2 ({batch_size}), "
                        f"--lora-r >= 1 ({lora_r}), --scifact-docs >= 0 ({scifact_docs})")
    data_dir = Path(data_dir or os.environ.get("SMEC_DATA_DIR", "data")).expanduser()
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SmecError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    store = out / "adapters"
    shutil.rmtree(store, ignore_errors=True)  # a fresh run trains its adapters, never reuses an old run's

    used = list(dict.fromkeys(visits))
    data = {name: load_domain(name, data_dir, seed=seed, scifact_docs=scifact_docs) for name in used}
    net, tok, pooling, eos = load_trainable(model, "lora", lora_r=lora_r, lora_alpha=2 * lora_r)
    encoder = Encoder(net, tok, pooling=pooling, normalize=True, max_length=eval_max_length, append_eos=eos)
    log.info("domain shift: %s; K=%d; %d steps x %d pairs at lr %g; LoRA r=%d", " -> ".join(visits), capacity,
             steps, batch_size, lr, lora_r)

    def encode_with(before_request: Callable[[], object] | None, label: str) -> EncodeFn:
        def encode(texts: list[str], what: str) -> np.ndarray:
            parts = []
            for i in tqdm(range(0, len(texts), REQUEST_TEXTS), desc=f"{label} {what}", unit="req",
                          disable=not progress, mininterval=2.0, leave=False):
                if before_request is not None:
                    before_request()
                parts.append(encoder.encode(texts[i:i + REQUEST_TEXTS], progress=False))
            return np.concatenate(parts)  # (n, D)

        return encode

    def train(name: str) -> dict:
        return train_adapter(net, tok, data[name].pairs, steps, lr, batch_size, max_length=train_max_length,
                             pooling=pooling, append_eos=eos, seed=seed, progress=progress, desc=f"train {name}")

    # -- (c) base model ---------------------------------------------------------------------
    base = {}
    with net.disable_adapter():
        for name in used:
            t = time.perf_counter()
            base[name] = data[name].evaluate(encode_with(None, f"base {name}"))
            log.info("base %s: %s %.4f (%.0f s)", name, data[name].metric, base[name], time.perf_counter() - t)

    # -- (a) AdapterCache -------------------------------------------------------------------
    cache = AdapterCache(net, capacity, store, seed=seed)
    rows, trained_quality = [], {}
    for i, name in enumerate(visits, 1):
        kind = cache.get(name)
        switch = cache.records[-1]
        n_requests = len(cache.records)
        training = None
        if name not in trained_quality:
            training = train(name)
            cache.save(name)
        t = time.perf_counter()
        quality = data[name].evaluate(encode_with(lambda n=name: cache.get(n), f"visit {i} {name}"))
        eval_s = time.perf_counter() - t
        if name not in trained_quality:
            trained_quality[name] = quality
        request_hits = sum(e.kind == "hit" for e in cache.records[n_requests:])
        rows.append({"visit": i, "letter": chr(65 + domains.index(name)), "domain": name, "event": kind,
                     "source": switch.source, "evicted": switch.evicted, "switch_ms": switch.ms,
                     "trained": None if training is None else {k: v for k, v in training.items() if k != "losses"},
                     "metric": data[name].metric, "quality": quality, "base": base[name],
                     "retention": quality / trained_quality[name], "eval_s": eval_s,
                     "eval_requests": len(cache.records) - n_requests, "eval_request_hits": request_hits})
        log.info("visit %d %s: %s%s, switch %.1f ms; %s %.4f (base %.4f)", i, name, kind,
                 f" (evicted {switch.evicted})" if switch.evicted else "", switch.ms, data[name].metric, quality,
                 base[name])
    cache_stats = cache.stats()

    # -- (b) one shared adapter, trained in sequence ----------------------------------------
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the active adapter was deleted": intended
        for domain in cache.loaded:  # the cache arm is over: free its slots
            net.delete_adapter(cache.adapter_name(domain))
    first = used[0]
    net.load_adapter(str(cache.folder(first)), adapter_name="shared")  # train_adapter unfreezes it
    net.set_adapter("shared")
    shared = [{"after": first, "domain": first, "metric": data[first].metric, "quality": trained_quality[first],
               "trained": rows[visits.index(first)]["trained"], "note": "copy of the cache's adapter"}]
    for name in used[1:]:
        training = train(name)
        shared.append({"after": name, "domain": None, "metric": None, "quality": None,
                       "trained": {k: v for k, v in training.items() if k != "losses"}})
    revisited = [d for d in used if visits.count(d) > 1]
    for name in revisited:  # measured again at the end, as the cache arm measures it on its return
        t = time.perf_counter()
        q = data[name].evaluate(encode_with(None, f"shared final {name}"))
        shared.append({"after": f"end ({used[-1]} last)", "domain": name, "metric": data[name].metric, "quality": q,
                       "retention": q / trained_quality[name]})
        log.info("shared adapter after %s: %s %s %.4f, retention %.4f (%.0f s)", " -> ".join(used), name,
                 data[name].metric, q, q / trained_quality[name], time.perf_counter() - t)

    last_cache = {r["domain"]: r for r in rows}
    retention_shared = {s["domain"]: s["retention"] for s in shared if "retention" in s}
    visit_hits = sum(r["event"] == "hit" for r in rows)
    results = {
        "command": command,
        "settings": {"model": model, "domains": domains, "sequence": visits, "capacity": capacity, "steps": steps,
                     "lr": lr, "batch_size": batch_size, "lora_r": lora_r, "lora_alpha": 2 * lora_r,
                     "train_max_length": train_max_length, "eval_max_length": eval_max_length,
                     "scifact_docs": scifact_docs, "seed": seed, "data_dir": str(data_dir),
                     "request_texts": REQUEST_TEXTS},
        "data": {name: data[name].note for name in used},
        "base": base,
        "visits": rows,
        "shared": shared,
        "cache": cache_stats,
        "summary": {
            "retention_cache": {d: last_cache[d]["retention"] for d in revisited},
            "retention_shared": {d: retention_shared[d] for d in revisited if d in retention_shared},
            "visit_hits": visit_hits, "visit_hit_rate": visit_hits / len(rows),
            "request_hit_rate": cache_stats["hit_rate"],
            "miss_ms_mean": cache_stats["miss_ms"]["mean"], "load_ms_mean": cache_stats["load_ms"]["mean"],
            "create_ms_mean": cache_stats["create_ms"]["mean"], "kb_per_adapter": cache_stats["kb_per_adapter"],
            "disk_kb_per_adapter": cache_stats["disk_kb_per_adapter"],
        },
        "wall_s": time.perf_counter() - started,
    }
    _write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    _write_atomic(out / "report.md", report_markdown(results))
    log.info("domain shift done in %.0f s: %s", results["wall_s"], out / "report.md")
    return results


def _f(x, fmt="{:.4f}") -> str:
    return "-" if x is None else fmt.format(x)


def report_markdown(results: dict) -> str:
    """The run as markdown: visits, the shared-adapter baseline, the summary."""
    s, summ = results["settings"], results["summary"]
    lines = ["# Adapter cache under domain shift", ""]
    if results.get("command"):
        lines += [f"`{results['command']}`", ""]
    lines += [f"{s['model']}, LoRA r={s['lora_r']} (all linear layers), K={s['capacity']}, "
              f"sequence {' -> '.join(s['sequence'])}; each new adapter trained {s['steps']} steps x "
              f"{s['batch_size']} pairs (InfoNCE, in-batch negatives) at lr {s['lr']:g}; wall time "
              f"{results['wall_s']:.0f} s.", ""]
    lines += ["## Visits (AdapterCache)", "",
              "| # | domain | cache | evicted | switch ms | trained | metric | quality | base | retention |",
              "|---:|---|---|---|---:|---|---|---:|---:|---:|"]
    for r in results["visits"]:
        tr = r["trained"]
        trained = f"{tr['steps']} steps, {tr['seconds']:.0f} s, loss {tr['loss_first']:.3f}->{tr['loss_last']:.3f}" \
            if tr else "-"
        lines.append(f"| {r['visit']} | {r['letter']}: {r['domain']} | {r['event']} ({r['source']}) | "
                     f"{r['evicted'] or '-'} | {r['switch_ms']:.1f} | {trained} | {r['metric']} | "
                     f"{r['quality']:.4f} | {r['base']:.4f} | {r['retention']:.4f} |")
    lines += ["", "## One shared adapter, trained in sequence (no cache)", "",
              "| after training on | evaluated | metric | quality | retention |", "|---|---|---|---:|---:|"]
    for r in results["shared"]:
        tr = r.get("trained")
        what = f" (trained {tr['steps']} steps, {tr['seconds']:.0f} s, " \
               f"loss {tr['loss_first']:.3f}->{tr['loss_last']:.3f})" if tr else ""
        lines.append(f"| {r['after']}{what} | {r['domain'] or '-'} | {r['metric'] or '-'} | {_f(r['quality'])} | "
                     f"{_f(r.get('retention'))} |")
    lines += ["", "## Summary", "", "| | value |", "|---|---:|"]
    for d, v in summ["retention_cache"].items():
        lines.append(f"| retention of {d}, AdapterCache | {v:.4f} |")
    for d, v in summ["retention_shared"].items():
        lines.append(f"| retention of {d}, shared adapter | {v:.4f} |")
    lines += [f"| visit hits / visits | {summ['visit_hits']} / {len(results['visits'])} |",
              f"| request hit rate ({s['request_texts']} texts per request) | "
              f"{_f(summ['request_hit_rate'], '{:.1%}')} |",
              f"| miss latency, load from disk, mean ms | {_f(summ['load_ms_mean'], '{:.1f}')} |",
              f"| miss latency, new adapter (init + save), mean ms | {_f(summ['create_ms_mean'], '{:.1f}')} |",
              f"| KB per adapter (memory / disk) | {_f(summ['kb_per_adapter'], '{:.0f}')} / "
              f"{_f(summ['disk_kb_per_adapter'], '{:.0f}')} |", ""]
    lines += [stats_markdown(results["cache"]), ""]
    lines += ["## Data", ""] + [f"- {name}: {note}" for name, note in results["data"].items()] + [""]
    lines += ["The shared adapter starts as a copy of the cache's first adapter, so both arms share its "
              "post-training quality; the cache's later visits to a domain reload the saved adapter, "
              "bit for bit.", ""]
    return "\n".join(lines)


def adapters_command(args, argv: Sequence[str] | None = None) -> str:
    """``smec adapters``: run :func:`run_domain_shift` and return the report's summary."""
    import shlex
    import sys

    words = list(sys.argv[1:] if argv is None else argv)
    results = run_domain_shift(
        domains=args.domains.split(","), sequence=args.sequence, capacity=args.capacity, steps=args.steps,
        lr=args.lr, batch_size=args.batch_size, out_dir=args.output, data_dir=args.data_dir, model=args.model,
        lora_r=args.lora_r, scifact_docs=args.scifact_docs, progress=not args.no_progress,
        command="smec " + " ".join(shlex.quote(w) for w in words))
    summ = results["summary"]
    parts = [f"retention {d}: cache {v:.4f}, shared {summ['retention_shared'].get(d, float('nan')):.4f}"
             for d, v in summ["retention_cache"].items()]
    return "; ".join(parts + [f"report: {Path(args.output) / 'report.md'}"])
