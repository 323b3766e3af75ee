"""The domain-shift run: per-domain adapters behind an LRU cache vs one shared adapter.

A sequence such as ``A,B,C,A`` visits domains in turn (A = the first of ``domains``, ...).

* **AdapterCache** (K = ``capacity``): a visit makes the domain's adapter active (hit, or
  miss: load from disk / create, evicting the least recently used); the first visit trains
  the new adapter (:func:`~smec_dist.train.adapters.train_adapter`, InfoNCE on the domain's pairs)
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

from ..backbone import Encoder, load_trainable
from ..data import doc_text, load_beir, load_sts_dir
from ..errors import SmecError
from ..evaluation.search import search_metrics
from ..evaluation.sts import cosine_spearman
from ..io import atomic_write_text
from ..train.adapters import AdapterCache, stats_markdown, train_adapter
from .base import Recipe, execute

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
        return search_metrics(d, doc_ids, q, query_ids, qrels, k=10, k_values=(10,), use_gpu="no")["nDCG@10"]

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


class DomainShift(Recipe):
    """The three arms (see the module docstring) as setup -> run -> save.

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
        command: the command line, recorded in the report.
    """

    def __init__(self, domains: Sequence[str] = DOMAINS, sequence: str = "A,B,C,A", capacity: int = 2,
                 steps: int = 20, lr: float = 1e-3, batch_size: int = 16,
                 out_dir: str | os.PathLike = "runs/adapters",
                 data_dir: str | os.PathLike | None = None, model: str = "minilm", lora_r: int = 8,
                 train_max_length: int = 64, eval_max_length: int = 128, scifact_docs: int = 500,
                 seed: int = 0, progress: bool = True, command: str | None = None):
        self.domains, self.sequence, self.capacity = domains, sequence, capacity
        self.steps, self.lr, self.batch_size, self.lora_r = steps, lr, batch_size, lora_r
        self.out_dir, self.data_dir, self.model, self.command = out_dir, data_dir, model, command
        self.train_max_length, self.eval_max_length = train_max_length, eval_max_length
        self.scifact_docs, self.seed, self.progress = scifact_docs, seed, progress

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        self.started = time.perf_counter()
        domains = self.domains = [d.strip() for d in self.domains if d.strip()]
        for d in domains:
            if d not in DOMAINS:
                raise SmecError(f"adapters --domains: '{d}' is not one of {', '.join(DOMAINS)}")
        if len(set(domains)) != len(domains):
            raise SmecError(f"adapters --domains: a domain is named twice ({','.join(domains)})")
        self.visits = parse_sequence(self.sequence, domains)
        capacity, steps, lr, batch_size, lora_r = self.capacity, self.steps, self.lr, self.batch_size, self.lora_r
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise SmecError(f"adapters --capacity must be an integer >= 1, got {capacity!r}")
        if steps < 1 or not lr > 0 or batch_size < 2 or lora_r < 1 or self.scifact_docs < 0:
            raise SmecError(f"adapters: need --steps >= 1 ({steps}), --lr > 0 ({lr}), --batch-size >= 2 "
                            f"({batch_size}), --lora-r >= 1 ({lora_r}), --scifact-docs >= 0 ({self.scifact_docs})")
        self.data_dir = Path(self.data_dir or os.environ.get("SMEC_DATA_DIR", "data")).expanduser()
        self.out = Path(self.out_dir).expanduser()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SmecError(f"{self.out}: cannot create the output folder ({exc.strerror or exc})") from exc
        self.store = self.out / "adapters"
        shutil.rmtree(self.store, ignore_errors=True)  # a fresh run trains its adapters, never reuses an old run's

        self.used = list(dict.fromkeys(self.visits))
        self.data = {name: load_domain(name, self.data_dir, seed=self.seed, scifact_docs=self.scifact_docs)
                     for name in self.used}
        self.net, self.tok, self.pooling, self.eos = load_trainable(self.model, "lora", lora_r=lora_r,
                                                                    lora_alpha=2 * lora_r)
        self.encoder = Encoder(self.net, self.tok, pooling=self.pooling, normalize=True,
                               max_length=self.eval_max_length, append_eos=self.eos)
        log.info("domain shift: %s; K=%d; %d steps x %d pairs at lr %g; LoRA r=%d", " -> ".join(self.visits),
                 capacity, steps, batch_size, lr, lora_r)

    def encode_with(self, before_request: Callable[[], object] | None, label: str) -> EncodeFn:
        """An encoder for a domain's evaluation that asks ``before_request`` (the cache) before
        every request of :data:`REQUEST_TEXTS` texts, as a server would."""
        def encode(texts: list[str], what: str) -> np.ndarray:
            parts = []
            for i in tqdm(range(0, len(texts), REQUEST_TEXTS), desc=f"{label} {what}", unit="req",
                          disable=not self.progress, mininterval=2.0, leave=False):
                if before_request is not None:
                    before_request()
                parts.append(self.encoder.encode(texts[i:i + REQUEST_TEXTS], progress=False))
            return np.concatenate(parts)  # (n, D)

        return encode

    def train(self, name: str) -> dict:
        return train_adapter(self.net, self.tok, self.data[name].pairs, self.steps, self.lr, self.batch_size,
                             max_length=self.train_max_length, pooling=self.pooling, append_eos=self.eos,
                             seed=self.seed, progress=self.progress, desc=f"train {name}")

    # -- run ------------------------------------------------------------------------------
    def run(self) -> dict:
        base = self.base_arm()
        rows, trained_quality, cache_stats, loaded = self.cache_arm(base)
        shared = self.shared_arm(rows, trained_quality, loaded)
        return self.summarise(base, rows, shared, trained_quality, cache_stats)

    def base_arm(self) -> dict[str, float]:
        """(c) the base model, adapters disabled."""
        base = {}
        with self.net.disable_adapter():
            for name in self.used:
                t = time.perf_counter()
                base[name] = self.data[name].evaluate(self.encode_with(None, f"base {name}"))
                log.info("base %s: %s %.4f (%.0f s)", name, self.data[name].metric, base[name],
                         time.perf_counter() - t)
        return base

    def cache_arm(self, base: dict[str, float]) -> tuple[list[dict], dict[str, float], dict, list[str]]:
        """(a) the AdapterCache: every visit makes its domain's adapter active, the first trains it."""
        data, domains = self.data, self.domains
        self.cache = cache = AdapterCache(self.net, self.capacity, self.store, seed=self.seed)
        rows, trained_quality = [], {}
        for i, name in enumerate(self.visits, 1):
            kind = cache.get(name)
            switch = cache.records[-1]
            n_requests = len(cache.records)
            training = None
            if name not in trained_quality:
                training = self.train(name)
                cache.save(name)
            t = time.perf_counter()
            quality = data[name].evaluate(self.encode_with(lambda n=name: cache.get(n), f"visit {i} {name}"))
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
        return rows, trained_quality, cache.stats(), list(cache.loaded)

    def shared_arm(self, rows: list[dict], trained_quality: dict[str, float], loaded: list[str]) -> list[dict]:
        """(b) one shared adapter, trained in sequence; revisited domains measured at the end."""
        net, data, used = self.net, self.data, self.used
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the active adapter was deleted": intended
            for domain in loaded:  # the cache arm is over: free its slots
                net.delete_adapter(self.cache.adapter_name(domain))
        first = used[0]
        net.load_adapter(str(self.cache.folder(first)), adapter_name="shared")  # train_adapter unfreezes it
        net.set_adapter("shared")
        shared = [{"after": first, "domain": first, "metric": data[first].metric, "quality": trained_quality[first],
                   "trained": rows[self.visits.index(first)]["trained"], "note": "copy of the cache's adapter"}]
        for name in used[1:]:
            training = self.train(name)
            shared.append({"after": name, "domain": None, "metric": None, "quality": None,
                           "trained": {k: v for k, v in training.items() if k != "losses"}})
        for name in self.revisited():  # measured again at the end, as the cache arm measures it on its return
            t = time.perf_counter()
            q = data[name].evaluate(self.encode_with(None, f"shared final {name}"))
            shared.append({"after": f"end ({used[-1]} last)", "domain": name, "metric": data[name].metric,
                           "quality": q, "retention": q / trained_quality[name]})
            log.info("shared adapter after %s: %s %s %.4f, retention %.4f (%.0f s)", " -> ".join(used), name,
                     data[name].metric, q, q / trained_quality[name], time.perf_counter() - t)
        return shared

    def revisited(self) -> list[str]:
        return [d for d in self.used if self.visits.count(d) > 1]

    def summarise(self, base: dict, rows: list[dict], shared: list[dict], trained_quality: dict,
                  cache_stats: dict) -> dict:
        last_cache = {r["domain"]: r for r in rows}
        retention_shared = {s["domain"]: s["retention"] for s in shared if "retention" in s}
        visit_hits = sum(r["event"] == "hit" for r in rows)
        revisited = self.revisited()
        return {
            "command": self.command,
            "settings": {"model": self.model, "domains": self.domains, "sequence": self.visits,
                         "capacity": self.capacity, "steps": self.steps, "lr": self.lr, "batch_size": self.batch_size,
                         "lora_r": self.lora_r, "lora_alpha": 2 * self.lora_r,
                         "train_max_length": self.train_max_length, "eval_max_length": self.eval_max_length,
                         "scifact_docs": self.scifact_docs, "seed": self.seed, "data_dir": str(self.data_dir),
                         "request_texts": REQUEST_TEXTS},
            "data": {name: self.data[name].note for name in self.used},
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
            "wall_s": time.perf_counter() - self.started,
        }

    # -- save -----------------------------------------------------------------------------
    def save(self, results: dict) -> dict:
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=2) + "\n")
        atomic_write_text(self.out / "report.md", report_markdown(results))
        log.info("domain shift done in %.0f s: %s", results["wall_s"], self.out / "report.md")
        return results


def run_domain_shift(**options) -> dict:
    """Run :class:`DomainShift` with ``options`` (its arguments); write ``results.json`` and
    ``report.md``; returns the results."""
    return execute(DomainShift(**options))


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
