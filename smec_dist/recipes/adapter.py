"""``smec run`` / ``smec compare``: encode once, train SMEC and the baselines per setting,
evaluate, report (adapter mode, the paper's).

Lifecycle: setup (dataset, cache) -> run (train + evaluate every setting and method) ->
save (heads, results.json, report.md, plot.png, config.yaml, manifest.json) -> cleanup.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import dist
from ..backbone import model_identity, model_width, resolve_pooling
from ..cache import load_cache
from ..config import Config, dump_config, resolved_losses, setting_loss
from ..data import (ensure_dataset, eval_qrels, identical_ids, load_beir, load_query_file, own_rows,
                    select_anchor_queries, validation_queries)
from ..data.splits import seeded_part
from ..errors import SmecError
from ..evaluation.bm25 import bm25_name, bm25_run
from ..evaluation.metrics import evaluate_run
from ..evaluation.search import drop_identical, search_metrics
from ..io import publish_run, write_file_manifest
from ..method.baselines import FixedHead
from ..method.export import PerDimHead, save_head
from ..method.registry import METHODS
from ..method.transform import pca_basis
from ..report import print_table, write_report
from ..tracking import Tracker, flatten
from ..train.samplers import TrainSet, train_head
from .base import Recipe, execute, stage_run_folder
from .encode import encode

log = logging.getLogger(__name__)


def subsample(data: TrainSet, max_anchors: int, gen: torch.Generator) -> TrainSet:
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


def check_dims(cfg: Config) -> None:
    """Fail before any encoding when ``run.dims`` do not fit the backbone."""
    width = model_width(cfg.model.name)
    if cfg.run.dims[0] >= width:
        raise SmecError(f"run.dims: {cfg.run.dims[0]} is not below the backbone width {width}")


class Job(Recipe):
    """The adapter job on a BEIR dataset (see module docstring). Subclasses change what is
    loaded (:meth:`setup`), how a method is scored (:meth:`evaluate`) and what each setting
    trains on (:meth:`train_set`); the training and reporting loop is shared."""

    retrieval = True  # a BEIR dataset (the STS job overrides)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.run.output_dir)  # where the results are once the run is done
        self.stage: Path | None = None  # where they are written until then (rank 0)
        self.timings: dict[str, float] = {}
        self.val_qids: list[str] = []  # held-out validation queries (run.validation), none by default
        self.val_split = ""
        self.candidates: dict[tuple[str, str], torch.nn.Module] = {}  # (setting, method) -> head
        self.tracker: Tracker | None = None

    # -- setup ---------------------------------------------------------------------------
    def stage_output(self) -> None:
        """First of all: the run folder may take the results and is writable (rank 0 writes)."""
        if dist.is_main():
            self.stage = stage_run_folder(self.out, self.cfg.run.overwrite)

    def start_tracking(self) -> None:
        """After every check: a run that fails its input leaves no tracking run behind."""
        t = self.cfg.track
        self.tracker = Tracker(t.backend, self.stage or self.out, self.cfg.to_dict(), t.project,
                               t.name or self.out.name, t.mode, enabled=dist.is_main())
        self.track_step = 0

    def setup(self) -> None:
        cfg = self.cfg
        self.stage_output()
        t = time.perf_counter()
        self.ds = load_beir(ensure_dataset(cfg.data.dataset, cfg.data.data_dir))
        self.identical = identical_ids(self.ds, cfg.data.ignore_identical_ids)
        log.info("%s: %s", self.ds.name, self.identical.describe())
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
            self.val_qids, self.val_split = self._validation_ids(anchor_ids)
            held = set(self.val_qids)
            val_texts = {self.ds.queries[q] for q in held}
            anchor_ids = [q for q in anchor_ids if q not in held and self.ds.queries.get(q) not in val_texts]
            self.val_qrels = {q: dict(self.ds.qrels[self.val_split][q]) for q in self.val_qids}
        if "supervised" in cfg.run.settings:
            split = cfg.run.supervised_split
            if split not in self.ds.qrels:
                raise SmecError(f"run.supervised_split: '{split}' is not a split of {self.ds.root}: "
                                f"{self.ds.root / 'qrels' / (split + '.tsv')} not found "
                                f"(present: {', '.join(self.ds.splits)})")
            if split == cfg.data.eval_split:
                raise SmecError(f"run.supervised_split: '{split}' is the eval split; training on its judgments would leak")
        check_dims(cfg)  # the cheap checks come before encoding, which can take hours on a large corpus
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
            self.anchor_qids = ids
        else:
            self.anchor_emb = self.queries[_rows(self.query_ids, anchor_ids)] if anchor_ids else self.queries[:0]
            self.anchor_qids = list(anchor_ids)
        log.info("dataset %s: %d docs, %d eval queries, %d anchor queries; backbone width %d",
                 self.ds.name, len(self.doc_ids), len(self.eval_qids), len(self.anchor_emb), self.full_dim)
        if self.val_qids:
            log.info("validation: %d judged queries of split '%s' held out of training and scored",
                     len(self.val_qids), self.val_split)
        self.start_tracking()

    def _validation_ids(self, anchor_ids: list[str]) -> tuple[list[str], str]:
        """The held-out validation queries of ``run.validation`` and the split whose judgments
        score them (checked before any encoding): a part of ``run.supervised_split``'s judged
        queries; on a set without that split whose anchors are ``holdout:`` of the eval split, a
        part of those anchors (judged, never scored as the test: the scored half stays apart)."""
        cfg = self.cfg
        split = cfg.run.supervised_split
        fraction = cfg.run.validation_fraction()
        if split not in self.ds.qrels and cfg.run.anchors.startswith("holdout:"):
            pool = [q for q in anchor_ids if any(s > 0 for s in self.ds.qrels[cfg.data.eval_split].get(q, {}).values())]
            if len(pool) < 2:
                raise SmecError(f"run.validation: the {len(pool)} judged anchor queries of {self.ds.root} are too few "
                                f"to hold some out")
            return seeded_part(pool, fraction, cfg.train.seed), cfg.data.eval_split
        if split not in self.ds.qrels:
            raise SmecError(f"run.validation: holds out queries of run.supervised_split '{split}', which is not a "
                            f"split of {self.ds.root} (present: {', '.join(self.ds.splits)}; or use "
                            f"run.anchors=holdout:<fraction> to hold out a part of those anchors)")
        if split == cfg.data.eval_split:
            raise SmecError(f"run.validation: run.supervised_split '{split}' is the eval split; validation "
                            f"queries must come from a split that is not scored as the test")
        try:
            return validation_queries(self.ds, split, fraction, seed=cfg.train.seed), split
        except SmecError as exc:
            raise SmecError(f"run.validation: {exc}") from exc

    # -- run -----------------------------------------------------------------------------
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
            out[part] = search_metrics(docs, self.doc_ids, qs, qids, qrels, k=self.cfg.run.search_k,
                                       k_values=self.cfg.run.k_values, efficiency=True,
                                       ignore_identical_ids=self.identical.ignore)
        return out

    def train_set(self, setting: str) -> TrainSet:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.train.seed)
        if setting == "unsupervised-queries":
            if not len(self.anchor_emb):
                raise SmecError("run.anchors: 'none' leaves the unsupervised-queries setting without anchors")
            anchors, anchor_doc, positives = self.anchor_emb, self._own_docs(self.anchor_qids), None
            if cfg.run.doc_anchors:  # unlabelled documents beside the query texts, each never its own sample
                n = len(self.corpus) if cfg.run.doc_anchors < 0 else min(cfg.run.doc_anchors, len(self.corpus))
                docs = torch.randperm(len(self.corpus), generator=torch.Generator().manual_seed(cfg.train.seed + 1))[:n]
                docs = docs.sort().values
                anchors, anchor_doc = torch.cat([anchors, self.corpus[docs]]), torch.cat([anchor_doc, docs])
        elif setting == "corpus-only":
            anchors, anchor_doc, positives = self.corpus, torch.arange(len(self.corpus)), None
        else:
            split = cfg.run.supervised_split
            dpos = {d: i for i, d in enumerate(self.doc_ids)}
            held = set(self.val_qids)  # validation queries never train
            qids = [q for q in self.query_ids if q not in held
                    and any(s > 0 for s in self.ds.qrels[split].get(q, {}).values())]
            positives = [[dpos[d] for d, s in self.ds.qrels[split][q].items() if s > 0] for q in qids]
            anchors, anchor_doc = self.queries[_rows(self.query_ids, qids)], self._own_docs(qids)
        return subsample(TrainSet(anchors, self.corpus, anchor_doc, positives), cfg.run.max_anchors, gen)

    def _own_docs(self, query_ids: list[str]) -> torch.Tensor:
        """(n,) the corpus row of each query's own document (its id) when identical ids are
        ignored, else -1: a query anchor never takes its own document as a sample."""
        row = {d: i for i, d in enumerate(self.doc_ids)}
        return torch.tensor(own_rows(query_ids, row, self.identical.ignore), dtype=torch.long)

    def _parts(self) -> tuple[str, ...]:
        """The query sets scored: the eval split's, and the held-out validation ones if any."""
        return ("eval", "validation") if self.val_qids else ("eval",)

    def _bm25(self, part: str) -> dict:
        qrels, qids, _ = self._query_set(part)
        qtext = [self.ds.queries[q] for q in qids]
        t = time.perf_counter()
        run = bm25_run(self.doc_ids, self.ds.doc_texts(), qids, qtext, k=self.cfg.run.search_k,
                       stemmer=self.cfg.run.bm25_stemmer)
        if self.identical.ignore:
            run = drop_identical(run)
        seconds = time.perf_counter() - t
        metrics = evaluate_run(qrels, run, self.cfg.run.k_values)
        metrics["ms/query"] = 1000.0 * seconds / max(1, len(qtext))
        return metrics

    def run(self) -> dict:
        if not dist.is_main():  # the cache is sharded over ranks; training a head is one process's work
            return {}
        cfg, dims, D = self.cfg, self.cfg.run.dims, self.full_dim
        methods, parts = cfg.run.methods, self._parts()
        # every table below is {part: ...}: the eval split's scores, and the validation ones
        fixed: dict[str, dict[str, dict]] = {part: {} for part in parts}

        def add_fixed(method: str, compress_at: dict) -> None:
            for part, table in self._scored(compress_at).items():
                fixed[part][method] = table

        t = time.perf_counter()
        if "full" in methods:
            add_fixed("full", {str(D): lambda x: x})
        if "truncation" in methods:
            add_fixed("truncation", {str(d): lambda x, d=d: F.normalize(x[:, :d], dim=-1) for d in dims})
            self.candidates[("any", "truncation")] = FixedHead(D, dims)
        if "pca" in methods:
            basis = pca_basis(self.corpus)  # (D, D) uncentred, fitted on the corpus
            add_fixed("pca", {str(d): lambda x, d=d: F.normalize(x @ basis[:d].T, dim=-1) for d in dims})
            self.candidates[("any", "pca")] = FixedHead(D, dims, basis=basis)
        if "bm25" in methods and not self.retrieval:
            log.info("bm25 skipped: %s is not a retrieval dataset", self.ds.name)
        elif "bm25" in methods:
            for part in parts:
                fixed[part]["bm25"] = {"sparse": self._bm25(part)}
        self.timings["untrained baselines"] = time.perf_counter() - t

        settings: dict[str, dict[str, dict]] = {part: {} for part in parts}
        for setting in cfg.run.settings:
            data, loss = self.train_set(setting), setting_loss(cfg, setting)
            for part in parts:
                settings[part][setting] = dict(fixed[part])
            for name, method in METHODS.items():
                if method.kind != "trained" or name not in methods:
                    continue
                t = time.perf_counter()
                per_seed = self._train_method(setting, name, data, loss)
                self.timings[f"{setting}: train {name}"] = time.perf_counter() - t
                for part in parts:
                    settings[part][setting][name] = mean_over_seeds(per_seed[part])
        results = {"meta": self.meta(), "settings": settings["eval"]}
        if "validation" in settings:
            results["validation"] = settings["validation"]
        if cfg.run.select == "validation":
            results["meta"]["best"] = self.select_best(settings["validation"])
        results["timings"] = {k: round(v, 2) for k, v in self.timings.items()}
        return results

    def _train_method(self, setting: str, name: str, data: TrainSet, loss) -> dict[str, list]:
        """Train ``name`` once per seed; the first seed's head is exported. Returns
        ``{part: [per-seed table]}``."""
        cfg, method = self.cfg, METHODS[name]
        per_seed: dict[str, list] = {part: [] for part in self._parts()}
        for i, seed in enumerate(cfg.run.seeds):
            tcfg = replace(cfg.train, seed=seed)
            log.info("[%s] training %s on %d anchors%s (seed %d)", setting, name, len(data.anchors),
                     f" + {tcfg.anchor_copies} noisy copies each" if tcfg.anchor_copies else "", seed)
            torch.manual_seed(seed)  # a head's initial weights do not depend on what trained before it
            head = method.build(self.full_dim, cfg.run.dims, tcfg)
            train_head(head, data, tcfg, method.sampler, progress=cfg.run.show_progress(), loss=loss,
                       log_fn=lambda row, key=f"{setting}/{name}/seed{seed}": self._track(key, row))
            if i == 0:  # the exported model is the first seed's
                save_head(head, self.stage / "models" / setting / f"{name}.safetensors",
                          about={**self.head_about(), "method": name, "setting": setting, "seed": seed,
                                 "loss": asdict(loss)})
                self.candidates[(setting, name)] = head  # run.select may export it
            at = ([self.full_dim] if method.full_width else []) + list(cfg.run.dims)
            scores = {str(d): lambda x, d=d: head.compress(x, d) for d in at}
            for part, table in self._scored(scores).items():
                per_seed[part].append(table)
        return per_seed

    def select_best(self, validation: dict) -> dict:
        """``run.select=validation``: per dim, the method and setting with the best validation
        nDCG@10 (PCA and truncation compete too), exported together as ``models/best.safetensors``
        with the choice in its metadata; returns the choice (recorded in results.json)."""
        metric = "nDCG@10"
        chosen, heads = {}, {}
        for d in self.cfg.run.dims:
            best = None
            for setting, methods in validation.items():
                for name, by_dim in methods.items():
                    key = ("any", name) if ("any", name) in self.candidates else (setting, name)
                    score = by_dim.get(str(d), {}).get(metric)
                    if key in self.candidates and score is not None and (best is None or score > best[0]):
                        best = (score, setting if key[0] != "any" else "-", name, key)
            if best is None:
                continue
            chosen[str(d)] = {"method": best[2], "setting": best[1], f"validation {metric}": best[0]}
            heads[d] = self.candidates[best[3]]
        about = {**self.head_about(), "method": "best", "selected": chosen,
                 "chosen_on": f"{len(self.val_qids)} held-out queries of '{self.val_split}' ({self.cfg.run.validation})"}
        save_head(PerDimHead(self.full_dim, list(heads), heads=heads), self.stage / "models" / "best.safetensors",
                  about=about)
        log.info("best per dim on validation: %s", ", ".join(f"{d}: {c['method']} ({c['setting']})"
                                                             for d, c in chosen.items()))
        return chosen

    def head_about(self) -> dict:
        """What every head of this run records about the embeddings it expects."""
        cfg = self.cfg
        pooling, append_eos = resolve_pooling(cfg.model.name, cfg.model.pooling, None)
        return {"base_model": model_identity(cfg.model.name), "pooling": pooling, "append_eos": append_eos,
                "max_length": cfg.model.max_length, "normalize": True, "model_dtype": cfg.model.dtype,
                "instructions": {"query": "", "doc": ""}, "dataset": self.ds.name, "trained_by": "smec run"}

    def _scored(self, compress_at: dict) -> dict[str, dict]:
        """``{part: {dim key: metrics}}`` of one method given its compressor per dim key."""
        per_key = {key: self.evaluate(fn) for key, fn in compress_at.items()}
        return {part: {key: by_part[part] for key, by_part in per_key.items()} for part in self._parts()}

    def meta(self) -> dict:
        cfg = self.cfg
        return {"dataset": self.ds.name, "model": cfg.model.name, "full_dim": self.full_dim, "dims": cfg.run.dims,
                "eval_split": cfg.data.eval_split, "n_queries": len(self.eval_qids), "n_docs": len(self.doc_ids),
                "anchors": cfg.run.anchors, "n_anchor_queries": len(self.anchor_emb), "seeds": list(cfg.run.seeds),
                "loss": resolved_losses(cfg, cfg.run.settings),
                "ignore_identical_ids": self.identical.ignore, "identical_ids": self.identical.describe(),
                **({"bm25": bm25_name(stemmer=cfg.run.bm25_stemmer)} if "bm25" in cfg.run.methods else {}),
                **({"validation": cfg.run.validation, "validation_split": self.val_split,
                    "n_validation_queries": len(self.val_qids)} if self.val_qids else {})}

    def _track(self, key: str, row: dict) -> None:
        # one W&B step counter for the whole job: every head's curve under its own key
        self.track_step += 1
        self.tracker.log({f"{key}/{row['phase']}/loss": row["loss"], f"{key}/{row['phase']}/lr": row["lr"]},
                         step=self.track_step)

    # -- save / cleanup ------------------------------------------------------------------
    def save(self, results: dict) -> dict:
        """Every artifact into the staging folder, then that folder in place of the run folder
        in one step: an interrupted run leaves the previous run's folder as it was."""
        if not dist.is_main():
            return {}
        dump_config(self.cfg, self.stage / "config.yaml", resolved={"loss": results["meta"]["loss"]})
        summary = {"metrics": results["settings"], "timings": results["timings"]}
        if "validation" in results:
            summary["validation"] = results["validation"]
        self.tracker.summary(flatten("", summary))
        paths = write_report(self.stage, results)
        write_run_manifest(self.stage)
        self.tracker.finish()  # its files are in the staging folder too: closed before the swap
        publish_run(self.stage, self.out)
        self.stage = None
        print(print_table(results, results["meta"].get("metric", "nDCG@10")))
        print(f"\nwrote {', '.join(str(self.out / p.name) for p in paths.values())}")
        return results

    def cleanup(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
        if self.stage is not None:  # the run failed: nothing of it is left behind
            shutil.rmtree(self.stage, ignore_errors=True)


def write_run_manifest(out: Path) -> Path:
    """``<out>/manifest.json``: size and sha256 of the config, the report files and every head,
    written last; :func:`smec_dist.method.export.load_head` checks a head against it."""
    files = [p for p in ("config.yaml", "results.json", "report.md", "plot.png") if (out / p).is_file()]
    files += sorted(str(p.relative_to(out)) for p in (out / "models").rglob("*.safetensors"))
    return write_file_manifest(out, files)


def mean_over_seeds(per_seed: list[dict]) -> dict:
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


def is_sts_folder(path: Path) -> bool:
    """An STS-B style folder (``<split>.tsv`` sentence pairs), not a BEIR one."""
    return not (path / "corpus.jsonl").exists() and any(path.glob("*.tsv"))


def run_job(cfg: Config) -> dict:
    """``smec run``: the adapter job on ``data.dataset`` (the STS job for an STS folder);
    returns the results on rank 0 (``{}`` on the others)."""
    from .sts import StsJob

    root = Path(cfg.data.dataset) if Path(cfg.data.dataset).is_dir() else Path(cfg.data.data_dir) / cfg.data.dataset
    job = StsJob(cfg) if root.is_dir() and is_sts_folder(root) else Job(cfg)
    return execute(job)
