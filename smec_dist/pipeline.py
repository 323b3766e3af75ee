"""The main job: encode once, train SMEC and the baselines per setting, evaluate, report.

Lifecycle: setup (dataset, cache) -> run (train + evaluate every setting and method) ->
save (heads, results.json, report.md, plot.png) -> cleanup.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import dist
from .backbone import load_encoder, model_width, resolve_pooling
from .cache import (MANIFEST, build_cache, check_complete_cache, ids_sha256, is_complete, load_cache,
                    write_file_manifest)
from .config import Config, dump_config
from .data import ensure_dataset, eval_qrels, load_beir, load_query_file, select_anchor_queries, validation_queries
from .errors import SmecError
from .evaluation.bm25 import bm25_run
from .evaluation.metrics import evaluate_run
from .evaluation.search import exact_search, to_run
from .evaluation.sts import cosine_spearman
from .head import CurriculumHead, MultiHead, PrefixHead, SingleHead, SMECHead, pca_basis, save_head
from .report import print_table, write_report
from .tracking import Tracker, flatten
from .trainer import TrainSet, train_head

log = logging.getLogger(__name__)


def cache_dir_for(cfg: Config) -> Path:
    if cfg.cache.dir:
        return Path(cfg.cache.dir)
    model = Path(cfg.model.name).name or cfg.model.name
    return Path(cfg.run.output_dir).parent / "cache" / f"{Path(cfg.data.dataset).name}-{model}-{cfg.cache.dtype}"


def encode(cfg: Config, ds=None, extra_texts: dict[str, tuple[list[str], list[str]]] | None = None,
           cache_dir: Path | None = None) -> Path:
    """Build (or finish, or reuse) the embedding cache of the corpus and the queries.

    Runs on one process or sharded over the ranks of ``accelerate launch``.
    """
    cache_dir = Path(cache_dir or cache_dir_for(cfg))
    if ds is None:
        ds = load_beir(ensure_dataset(cfg.data.dataset, cfg.data.data_dir))
    parts = extra_texts or {
        "corpus": (ds.doc_ids(), ds.doc_texts()),
        "queries": (list(ds.queries), list(ds.queries.values())),
    }
    if (cache_dir / MANIFEST).exists():
        # A sealed cache that is damaged (malformed manifest, a shard missing or truncated)
        # cannot be repaired by encoding again: name the file now, before a model is loaded.
        load_cache(cache_dir, verify=False)
    if is_complete(cache_dir):
        pooling, append_eos = resolve_pooling(cfg.model.name, cfg.model.pooling, None)
        check_complete_cache(cache_dir, {
            "model": cfg.model.name, "pooling": pooling, "append_eos": append_eos,
            "max_length": cfg.model.max_length, "dtype": cfg.cache.dtype,
            "parts": {name: {"count": len(ids), "ids_sha256": ids_sha256(ids)} for name, (ids, _) in parts.items()},
        })
        log.info("embedding cache %s is complete and matches: reusing it", cache_dir)
        return cache_dir
    encoder = load_encoder(cfg.model.name, pooling=cfg.model.pooling, max_length=cfg.model.max_length,
                           device=cfg.model.device, dtype=cfg.model.dtype)
    build_cache(cache_dir, encoder, cfg.model.name, parts, dataset_path=str(ds.root), dtype=cfg.cache.dtype,
                shard_size=cfg.cache.shard_size, batch_size=cfg.model.batch_size, rank=dist.rank(),
                world_size=dist.world_size(), barrier=dist.barrier, progress=cfg.run.progress and dist.is_main())
    dist.barrier()
    return cache_dir


def _subsample(data: TrainSet, max_anchors: int, gen: torch.Generator) -> TrainSet:
    """At most ``max_anchors`` anchors (``run.max_anchors``; 0 keeps all), drawn with ``gen``,
    kept in their order with their corpus rows and positives."""
    if not max_anchors or len(data.anchors) <= max_anchors:
        return data
    keep = torch.randperm(len(data.anchors), generator=gen)[:max_anchors].sort().values
    positives = [data.positives[i] for i in keep.tolist()] if data.positives is not None else None
    return TrainSet(data.anchors[keep], data.corpus, data.anchor_doc[keep], positives)


def _rows(ids: list[str], wanted: list[str]) -> np.ndarray:
    pos = {x: i for i, x in enumerate(ids)}
    return np.array([pos[w] for w in wanted], dtype=np.int64)


def supervised_overrides(cfg: Config) -> dict:
    """The ``train`` fields the supervised setting replaces (InfoNCE on; its own KL temperature
    when ``run.supervised_temperature`` is set)."""
    overrides: dict = {"infonce_weight": cfg.run.supervised_infonce_weight}
    if cfg.run.supervised_temperature:
        overrides["temperature"] = cfg.run.supervised_temperature
    return overrides


class Job:
    """State of one run of the main job (see module docstring)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.run.output_dir)
        self.timings: dict[str, float] = {}
        self.val_qids: list[str] = []  # held-out validation queries (run.validation), none by default

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        for stale in ("results.json", "report.md", "plot.png"):  # never leave a report of another run
            (self.out / stale).unlink(missing_ok=True)
        t = time.perf_counter()
        self.ds = load_beir(ensure_dataset(cfg.data.dataset, cfg.data.data_dir))
        if cfg.data.eval_split not in self.ds.qrels:
            raise SmecError(f"data.eval_split: '{cfg.data.eval_split}' is not a split of {self.ds.root}: "
                            f"{self.ds.root / 'qrels' / (cfg.data.eval_split + '.tsv')} not found "
                            f"(present: {', '.join(self.ds.splits)})")
        try:
            anchor_texts, anchor_ids = select_anchor_queries(self.ds, cfg.run.anchors, cfg.data.eval_split,
                                                             seed=cfg.train.seed)
        except SmecError as exc:
            raise SmecError(f"run.anchors: {exc}") from exc
        self.qrels = eval_qrels(self.ds, cfg.data.eval_split, set(anchor_ids))
        val_texts: set[str] = set()
        if cfg.run.validation:
            self.val_qids = self._validation_ids()
            held = set(self.val_qids)
            val_texts = {self.ds.queries[q] for q in held}
            anchor_ids = [q for q in anchor_ids if q not in held and self.ds.queries.get(q) not in val_texts]
            self.val_qrels = {q: dict(self.ds.qrels[cfg.run.supervised_split][q]) for q in self.val_qids}
        if "supervised" in cfg.run.settings:
            split = cfg.run.supervised_split
            if split not in self.ds.qrels:
                raise SmecError(f"run.supervised_split: '{split}' is not a split of {self.ds.root}: "
                                f"{self.ds.root / 'qrels' / (split + '.tsv')} not found "
                                f"(present: {', '.join(self.ds.splits)})")
            if split == cfg.data.eval_split:
                raise SmecError(f"run.supervised_split: '{split}' is the eval split; training on its judgments would leak")
        # the cheap checks come before encoding, which can take hours on a large corpus
        width = model_width(cfg.model.name)
        if cfg.run.dims[0] >= width:
            raise SmecError(f"run.dims: {cfg.run.dims[0]} is not below the backbone width {width}")
        self.timings["load data"] = time.perf_counter() - t

        t = time.perf_counter()
        cache_dir = encode(cfg, self.ds)
        cache = load_cache(cache_dir)
        self.timings["encode (cache)"] = time.perf_counter() - t
        self.full_dim = cache.dim
        self.doc_ids = cache.ids("corpus")
        self.query_ids = cache.ids("queries")
        self.corpus = F.normalize(torch.from_numpy(cache.embeddings("corpus")), dim=-1)  # (n_c, D)
        self.queries = F.normalize(torch.from_numpy(cache.embeddings("queries")), dim=-1)  # (n_q, D)
        self.eval_qids = [q for q in self.query_ids if q in self.qrels]
        self.eval_q = self.queries[_rows(self.query_ids, self.eval_qids)]  # (n_eval, D)
        self.val_q = self.queries[_rows(self.query_ids, self.val_qids)]  # (n_val, D); none when off

        if cfg.run.anchors.startswith("file:"):  # texts outside the dataset: a cache of their own
            pairs = load_query_file(cfg.run.anchors[5:])
            if self.val_qids:  # a validation query must not train, whatever its id in the file
                pairs = [p for p in pairs if p[0] not in self.val_qrels and p[1] not in val_texts]
            ids, texts = [p[0] for p in pairs], [p[1] for p in pairs]
            tag = hashlib.sha256("\n".join(ids + texts).encode()).hexdigest()[:12]
            sub = encode(cfg, self.ds, {"anchors": (ids, texts)}, cache_dir / f"anchors-{tag}")
            self.anchor_emb = F.normalize(torch.from_numpy(load_cache(sub).embeddings("anchors")), dim=-1)
        else:
            self.anchor_emb = self.queries[_rows(self.query_ids, anchor_ids)] if anchor_ids else self.queries[:0]
        log.info("dataset %s: %d docs, %d eval queries, %d anchor queries; backbone width %d",
                 self.ds.name, len(self.doc_ids), len(self.eval_qids), len(self.anchor_emb), self.full_dim)
        if self.val_qids:
            log.info("validation: %d judged queries of split '%s' held out of training and scored",
                     len(self.val_qids), cfg.run.supervised_split)
        t = cfg.track  # after every check: a run that fails its input leaves no tracking run behind
        self.tracker = Tracker(t.backend, self.out, cfg.to_dict(), t.project, t.name, t.mode, enabled=dist.is_main())
        self.track_step = 0

    def _validation_ids(self) -> list[str]:
        """The held-out validation queries of ``run.validation`` (checked before any encoding)."""
        cfg = self.cfg
        split = cfg.run.supervised_split
        if split not in self.ds.qrels:
            raise SmecError(f"run.validation: holds out queries of run.supervised_split '{split}', which is not a "
                            f"split of {self.ds.root} (present: {', '.join(self.ds.splits)})")
        if split == cfg.data.eval_split:
            raise SmecError(f"run.validation: run.supervised_split '{split}' is the eval split; validation "
                            f"queries must come from a split that is not scored as the test")
        try:
            return validation_queries(self.ds, split, cfg.run.validation_fraction(), seed=cfg.train.seed)
        except SmecError as exc:
            raise SmecError(f"run.validation: {exc}") from exc

    # -- run -----------------------------------------------------------------------------
    retrieval = True  # a BEIR dataset (the STS job overrides)

    def _query_set(self, part: str) -> tuple[dict, list[str], torch.Tensor]:
        """(qrels, query ids, teacher embeddings) of ``"eval"`` or ``"validation"``."""
        if part == "eval":
            return self.qrels, self.eval_qids, self.eval_q
        return self.val_qrels, self.val_qids, self.val_q

    def evaluate(self, compress) -> dict[str, dict]:
        """Metrics of one method at one dim per query set (``"eval"``, and ``"validation"`` when
        held out), with the index's bytes per document (float32) and the exact search's
        milliseconds per query (FAISS, flat inner product). The corpus is compressed once."""
        with torch.no_grad():
            docs = compress(self.corpus).numpy()
        out = {}
        for part in self._parts():
            qrels, qids, q = self._query_set(part)
            with torch.no_grad():
                qs = compress(q).numpy()
            t = time.perf_counter()
            scores, rows = exact_search(docs, qs, self.cfg.run.search_k)
            seconds = time.perf_counter() - t
            metrics = evaluate_run(qrels, to_run(qids, self.doc_ids, scores, rows), self.cfg.run.k_values)
            metrics["bytes/doc"] = float(docs.shape[1] * docs.dtype.itemsize)
            metrics["ms/query"] = 1000.0 * seconds / max(1, len(qs))
            out[part] = metrics
        return out

    def train_set(self, setting: str) -> tuple[TrainSet, dict]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.train.seed)
        overrides: dict = {}
        if setting == "unsupervised-queries":
            if not len(self.anchor_emb):
                raise SmecError("run.anchors: 'none' leaves the unsupervised-queries setting without anchors")
            anchors, anchor_doc, positives = self.anchor_emb, torch.full((len(self.anchor_emb),), -1), None
        elif setting == "corpus-only":
            anchors, anchor_doc, positives = self.corpus, torch.arange(len(self.corpus)), None
            if cfg.run.corpus_only_temperature:
                overrides["temperature"] = cfg.run.corpus_only_temperature
        else:
            split = cfg.run.supervised_split
            dpos = {d: i for i, d in enumerate(self.doc_ids)}
            held = set(self.val_qids)  # validation queries never train
            qids = [q for q in self.query_ids if q not in held
                    and any(s > 0 for s in self.ds.qrels[split].get(q, {}).values())]
            positives = [[dpos[d] for d, s in self.ds.qrels[split][q].items() if s > 0] for q in qids]
            anchors, anchor_doc = self.queries[_rows(self.query_ids, qids)], torch.full((len(qids),), -1)
            overrides = supervised_overrides(cfg)
        return _subsample(TrainSet(anchors, self.corpus, anchor_doc, positives), cfg.run.max_anchors, gen), overrides

    def _parts(self) -> tuple[str, ...]:
        """The query sets scored: the eval split's, and the held-out validation ones if any."""
        return ("eval", "validation") if self.val_qids else ("eval",)

    def _bm25(self, part: str) -> dict:
        qrels, qids, _ = self._query_set(part)
        qtext = [self.ds.queries[q] for q in qids]
        t = time.perf_counter()
        run = bm25_run(self.doc_ids, self.ds.doc_texts(), qids, qtext, k=self.cfg.run.search_k)
        seconds = time.perf_counter() - t
        metrics = evaluate_run(qrels, run, self.cfg.run.k_values)
        metrics["ms/query"] = 1000.0 * seconds / max(1, len(qtext))
        return metrics

    def run(self) -> dict:
        cfg, dims, D = self.cfg, self.cfg.run.dims, self.full_dim
        methods, parts = cfg.run.methods, self._parts()
        # every table below is {part: ...}: the eval split's scores, and the validation ones
        fixed: dict[str, dict[str, dict]] = {part: {} for part in parts}

        def scored(compress_at: dict) -> dict[str, dict]:  # {part: {dim key: metrics}}
            per_key = {key: self.evaluate(fn) for key, fn in compress_at.items()}
            return {part: {key: by_part[part] for key, by_part in per_key.items()} for part in parts}

        def add_fixed(method: str, compress_at: dict) -> None:
            for part, table in scored(compress_at).items():
                fixed[part][method] = table

        t = time.perf_counter()
        if "full" in methods:
            add_fixed("full", {str(D): lambda x: x})
        if "truncation" in methods:
            add_fixed("truncation", {str(d): lambda x, d=d: F.normalize(x[:, :d], dim=-1) for d in dims})
        if "pca" in methods:
            basis = pca_basis(self.corpus)  # (D, D) uncentred, fitted on the corpus
            add_fixed("pca", {str(d): lambda x, d=d: F.normalize(x @ basis[:d].T, dim=-1) for d in dims})
        if "bm25" in methods and not self.retrieval:
            log.info("bm25 skipped: %s is not a retrieval dataset", self.ds.name)
        elif "bm25" in methods:
            for part in parts:
                fixed[part]["bm25"] = {"sparse": self._bm25(part)}
        self.timings["untrained baselines"] = time.perf_counter() - t

        settings: dict[str, dict[str, dict]] = {part: {} for part in parts}
        for setting in cfg.run.settings:
            data, overrides = self.train_set(setting)
            tcfg = replace(cfg.train, **overrides)
            for part in parts:
                settings[part][setting] = dict(fixed[part])
            heads = {
                "smec": (lambda: SMECHead(D, dims, hidden=tcfg.hidden, tau=tcfg.ads_tau, noise=tcfg.ads_noise), "xbm"),
                "mrl": (lambda: PrefixHead(D, dims, hidden=tcfg.hidden), "exact"),
                "linear": (lambda: MultiHead(D, dims, hidden=tcfg.hidden), "exact"),
                "cmrl": (lambda: CurriculumHead(D, dims, hidden=tcfg.hidden), "exact"),
                "single": (lambda: SingleHead(D, dims, hidden=tcfg.hidden), "exact"),
            }
            for method in ("single", "linear", "mrl", "cmrl", "smec"):
                if method not in methods:
                    continue
                make, sampler = heads[method]
                t = time.perf_counter()
                per_seed: dict[str, list] = {part: [] for part in parts}
                for i, seed in enumerate(cfg.run.seeds):
                    log.info("[%s] training %s on %d anchors%s (seed %d)", setting, method, len(data.anchors),
                             f" + {tcfg.anchor_copies} noisy copies each" if tcfg.anchor_copies else "", seed)
                    head = make()
                    train_head(head, data, replace(tcfg, seed=seed), sampler, progress=cfg.run.progress,
                               log_fn=lambda row, key=f"{setting}/{method}/seed{seed}": self._track(key, row))
                    if i == 0:  # the exported model is the first seed's
                        save_head(head, self.out / "models" / setting / f"{method}.safetensors",
                                  extra={"setting": setting, "model": cfg.model.name, "dataset": self.ds.name,
                                         "seed": seed})
                    at = ([D] if method == "single" else []) + list(dims)  # single: its own full width too
                    for part, table in scored({str(d): lambda x, d=d: head.compress(x, d) for d in at}).items():
                        per_seed[part].append(table)
                self.timings[f"{setting}: train {method}"] = time.perf_counter() - t
                for part in parts:
                    settings[part][setting][method] = _mean_over_seeds(per_seed[part])
        results = {"meta": self.meta(), "settings": settings["eval"]}
        if "validation" in settings:
            results["validation"] = settings["validation"]
        results["timings"] = {k: round(v, 2) for k, v in self.timings.items()}
        return results

    def meta(self) -> dict:
        cfg = self.cfg
        return {"dataset": self.ds.name, "model": cfg.model.name, "full_dim": self.full_dim, "dims": cfg.run.dims,
                "eval_split": cfg.data.eval_split, "n_queries": len(self.eval_qids), "n_docs": len(self.doc_ids),
                "anchors": cfg.run.anchors, "n_anchor_queries": len(self.anchor_emb), "seeds": list(cfg.run.seeds),
                **({"validation": cfg.run.validation, "validation_split": cfg.run.supervised_split,
                    "n_validation_queries": len(self.val_qids)} if self.val_qids else {})}

    def _track(self, key: str, row: dict) -> None:
        # one W&B step counter for the whole job: every head's curve under its own key
        self.track_step += 1
        self.tracker.log({f"{key}/{row['phase']}/loss": row["loss"], f"{key}/{row['phase']}/lr": row["lr"]},
                         step=self.track_step)

    # -- save ----------------------------------------------------------------------------
    def save(self, results: dict) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, self.out / "config.yaml")
        summary = {"metrics": results["settings"], "timings": results["timings"]}
        if "validation" in results:
            summary["validation"] = results["validation"]
        self.tracker.summary(flatten("", summary))
        paths = write_report(self.out, results)
        write_run_manifest(self.out)
        return paths


def is_sts_folder(path: Path) -> bool:
    """An STS-B style folder (``<split>.tsv`` sentence pairs), not a BEIR one."""
    return not (path / "corpus.jsonl").exists() and any(path.glob("*.tsv"))


class StsJob(Job):
    """The main job on an STS dataset (STS-B): Spearman of cosine similarities per method and dim.

    The train split's distinct sentences play the corpus: they are the anchors of the
    ``corpus-only`` setting (unlabelled: each sentence's neighbourhood among them is
    preserved) and the PCA basis; the ``supervised`` setting trains on the train pairs scored
    at least ``STS_POSITIVE`` (first sentence -> second) with InfoNCE. Scores come from
    ``data.eval_split`` (test).
    """

    retrieval = False
    STS_POSITIVE = 4.0

    def setup(self) -> None:
        from types import SimpleNamespace

        from .data import load_sts_dir

        cfg = self.cfg
        for stale in ("results.json", "report.md", "plot.png"):
            (self.out / stale).unlink(missing_ok=True)
        t = time.perf_counter()
        root = ensure_dataset(cfg.data.dataset, cfg.data.data_dir)
        if "unsupervised-queries" in cfg.run.settings:
            raise SmecError(f"run.settings: 'unsupervised-queries' needs query texts; {root} is an STS dataset "
                            f"(use corpus-only and supervised)")
        if cfg.run.validation:
            raise SmecError(f"run.validation: holds out judged retrieval queries; {root} is an STS dataset "
                            f"(score a dev split with data.eval_split instead)")
        train = load_sts_dir(root, "train")
        self.pairs = load_sts_dir(root, cfg.data.eval_split)
        width = model_width(cfg.model.name)
        if cfg.run.dims[0] >= width:
            raise SmecError(f"run.dims: {cfg.run.dims[0]} is not below the backbone width {width}")
        texts = list(dict.fromkeys([p.s1 for p in train] + [p.s2 for p in train]
                                   + [p.s1 for p in self.pairs] + [p.s2 for p in self.pairs]))
        row = {x: i for i, x in enumerate(texts)}
        ids = [f"s{i}" for i in range(len(texts))]
        self.timings["load data"] = time.perf_counter() - t

        t = time.perf_counter()
        ds = SimpleNamespace(root=root, name=root.name)
        cache_dir = encode(cfg, ds, {"sentences": (ids, texts)})
        emb = F.normalize(torch.from_numpy(load_cache(cache_dir).embeddings("sentences")), dim=-1)  # (n, D)
        self.timings["encode (cache)"] = time.perf_counter() - t
        self.ds, self.full_dim = ds, emb.shape[1]
        train_rows = sorted({row[p.s1] for p in train} | {row[p.s2] for p in train})
        self.corpus = emb[train_rows]  # (n_train_sentences, D)
        self.e1 = emb[[row[p.s1] for p in self.pairs]]
        self.e2 = emb[[row[p.s2] for p in self.pairs]]
        self.gold = np.array([p.score for p in self.pairs])
        at = {r: i for i, r in enumerate(train_rows)}
        good = [p for p in train if p.score >= self.STS_POSITIVE]
        self.pos_anchor = emb[[row[p.s1] for p in good]]
        self.pos_rows = [[at[row[p.s2]]] for p in good]
        log.info("STS dataset %s: %d train sentences, %d train pairs (%d scored >= %.0f), %d %s pairs; width %d",
                 root.name, len(train_rows), len(train), len(good), self.STS_POSITIVE, len(self.pairs),
                 cfg.data.eval_split, self.full_dim)
        t = cfg.track
        self.tracker = Tracker(t.backend, self.out, cfg.to_dict(), t.project, t.name, t.mode, enabled=dist.is_main())
        self.track_step = 0

    def evaluate(self, compress) -> dict[str, dict]:
        with torch.no_grad():
            a, b = compress(self.e1), compress(self.e2)
        return {"eval": {"Spearman": cosine_spearman(a.numpy(), b.numpy(), self.gold),
                         "bytes/doc": float(a.shape[1] * 4)}}

    def train_set(self, setting: str) -> tuple[TrainSet, dict]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.train.seed)
        if setting == "corpus-only":
            anchors, anchor_doc, positives, overrides = self.corpus, torch.arange(len(self.corpus)), None, {}
        else:
            anchors, anchor_doc = self.pos_anchor, torch.full((len(self.pos_anchor),), -1)
            positives, overrides = self.pos_rows, supervised_overrides(cfg)
        return _subsample(TrainSet(anchors, self.corpus, anchor_doc, positives), cfg.run.max_anchors, gen), overrides

    def meta(self) -> dict:
        return {"dataset": self.ds.name, "model": self.cfg.model.name, "full_dim": self.full_dim,
                "dims": self.cfg.run.dims, "eval_split": self.cfg.data.eval_split, "n_pairs": len(self.pairs),
                "n_train_sentences": len(self.corpus), "seeds": list(self.cfg.run.seeds),
                "metric": "Spearman", "metrics": ["Spearman"]}


def write_run_manifest(out: Path) -> Path:
    """``<out>/manifest.json``: size and sha256 of the config, the report files and every head,
    written last; :func:`smec_dist.head.load_head` checks a head against it."""
    files = [p for p in ("config.yaml", "results.json", "report.md", "plot.png") if (out / p).is_file()]
    files += sorted(str(p.relative_to(out)) for p in (out / "models").rglob("*.safetensors"))
    return write_file_manifest(out, files)


def _mean_over_seeds(per_seed: list[dict]) -> dict:
    """Average each metric over seeds; with several seeds, add ``<metric> std`` (population)."""
    out = {}
    for dim in per_seed[0]:
        out[dim] = {}
        for metric in per_seed[0][dim]:
            vals = np.array([r[dim][metric] for r in per_seed], dtype=np.float64)
            out[dim][metric] = float(vals.mean())
            if len(vals) > 1:
                out[dim][f"{metric} std"] = float(vals.std())
    return out


def run_job(cfg: Config) -> dict:
    """setup -> run -> save; returns the results (rank 0 does the training and writing)."""
    root = Path(cfg.data.dataset) if Path(cfg.data.dataset).is_dir() else Path(cfg.data.data_dir) / cfg.data.dataset
    job = StsJob(cfg) if root.is_dir() and is_sts_folder(root) else Job(cfg)
    job.setup()
    if not dist.is_main():  # the cache is sharded over ranks; training a head is one process's work
        return {}
    try:
        results = job.run()
        paths = job.save(results)
    finally:
        job.tracker.finish()
    print(print_table(results, results["meta"].get("metric", "nDCG@10")))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return results
