"""``smec eval``: retrieval metrics of a trained SMEC model, per method and dim, sharded over ranks.

A :class:`SmecModel` is a backbone encoder plus zero or more heads: a ``smec train`` stage
export (its SMEC head), or a base model with the heads ``smec run`` wrote. Evaluation:

1. the corpus and the queries are encoded at full width, sharded over every rank of
   ``accelerate launch`` (each rank writes its own shards of an embedding cache beside the
   results; a killed or requeued evaluation encodes only the missing shards),
2. rank 0 compresses them with every method at every dim and searches them exactly with
   FAISS (a GPU index when faiss has a GPU, the CPU otherwise),
3. ``eval.json`` (metrics), ``eval.md`` (a table) are written; ``--mteb`` adds MTEB's own
   result files under ``mteb/``.

Shards hold the same texts in the same batches whatever the number of ranks, so one process
and N processes give the same embeddings and the same metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import dist
from ..backbone import Encoder, identity_key, load_encoder, model_identity, resolve_device, resolve_model
from ..cache import build_cache, load_cache
from ..config import Config
from ..data import ensure_dataset, identical_ids, load_beir
from ..errors import SmecError
from ..evaluation.search import search_metrics
from ..io import atomic_write_json, atomic_write_text, file_table, file_table_problem, read_file_manifest
from ..method.export import load_head
from .base import Recipe, execute

log = logging.getLogger(__name__)

FULL = "full"          # the uncompressed embedding (one row, at full width)
TRUNCATE = "truncate"  # first d dims, renormalised: the baseline any model has


class SmecModel:
    """A backbone encoder and the heads that compress its embeddings.

    ``encode(texts, kind, dim, method)`` is the one call users and the MTEB wrapper need:
    ``kind`` is ``"query"`` or ``"doc"`` (each has its instruction prefix), ``dim=None`` is
    full width.
    """

    def __init__(self, encoder: Encoder, name: str, heads: dict[str, torch.nn.Module] | None = None,
                 query_instruction: str = "", doc_instruction: str = "", identity: dict | None = None,
                 dtype: str = "float32"):
        self.encoder, self.name, self.dtype = encoder, name, dtype
        self.heads = dict(heads or {})
        self.instruction = {"query": query_instruction, "doc": doc_instruction}
        # what the backbone is (its weights' digest, not its name): an embedding cache's key
        self.identity = dict(identity or {"name": name})
        self.default_method = next(iter(self.heads), TRUNCATE)  # what encode(..., method=None) uses
        digest = json.dumps([self.identity, dtype, self.instruction], sort_keys=True).encode()
        self.revision = hashlib.sha256(digest).hexdigest()[:12]  # MTEB's results folder
        self.batch_size, self.progress = 64, False  # encode()'s defaults (MTEB calls it without them)
        for method, head in self.heads.items():
            if head.full_dim != encoder.dim:
                raise SmecError(f"head '{method}' takes {head.full_dim}-dim input but the model "
                                f"{name} gives {encoder.dim}")

    @property
    def full_dim(self) -> int:
        return self.encoder.dim

    @property
    def methods(self) -> list[str]:
        return [*self.heads, TRUNCATE]

    def dims(self, method: str) -> list[int]:
        if method == TRUNCATE:
            dims = sorted({d for h in self.heads.values() for d in h.dims}, reverse=True)
            return dims or [d for d in (self.full_dim // 2, self.full_dim // 4, self.full_dim // 8) if d > 0]
        if method not in self.heads:
            raise SmecError(f"unknown method '{method}' (this model has {', '.join(self.methods)})")
        return list(self.heads[method].dims)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_stage(cls, stage_dir: str | Path, device: str = "auto", dtype: str = "float32") -> "SmecModel":
        """A ``smec train`` stage export, with transformers and peft only (no DeepSpeed)."""
        from transformers import AutoModel, AutoTokenizer

        stage = Path(stage_dir)
        meta_path = stage / "smec.json"
        if not meta_path.is_file():
            raise SmecError(f"{stage}: not a stage export (no smec.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SmecError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        listed = read_file_manifest(stage)  # exports before checksums have none
        problem = file_table_problem(stage, listed) if listed is not None else None
        if problem:
            raise SmecError(f"{stage}: damaged export: {problem}")
        backbone = stage / "backbone"
        torch_dtype = getattr(torch, dtype)
        if (backbone / "adapter_config.json").is_file():
            from peft import PeftModel

            base = AutoModel.from_pretrained(resolve_model(meta["base_model"]), dtype=torch_dtype)
            model = PeftModel.from_pretrained(base, backbone).merge_and_unload()
        elif (backbone / "config.json").is_file():
            model = AutoModel.from_pretrained(backbone, dtype=torch_dtype)
        else:  # a frozen backbone is not exported: the base model is the one trained with
            model = AutoModel.from_pretrained(resolve_model(meta["base_model"]), dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(backbone)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        device = resolve_device(device)
        model.to(device).eval()
        enc = Encoder(model, tok, pooling=meta["pooling"], normalize=True, max_length=meta["max_length"],
                      append_eos=meta["append_eos"], device=device)
        return cls(enc, f"{stage.resolve().parent.parent.name}-{stage.name}", {"smec": load_head(stage / "head.safetensors")},
                   meta["query_instruction"], meta["doc_instruction"], identity=_export_identity(stage, listed),
                   dtype=dtype)

    @classmethod
    def from_model(cls, name: str, heads: list[str | Path] = (), *, pooling: str | None = None,
                   max_length: int = 256, device: str = "auto", dtype: str = "float32",
                   query_instruction: str = "", doc_instruction: str = "") -> "SmecModel":
        """A base model (alias, folder or hub id) with heads written by ``smec run``."""
        enc = load_encoder(name, pooling=pooling, max_length=max_length, device=device, dtype=dtype)
        loaded: dict[str, torch.nn.Module] = {}
        for path in map(Path, heads):
            method = path.stem
            if method in (FULL, TRUNCATE) or method in loaded:  # e.g. two settings' smec.safetensors
                method = f"{path.parent.name}-{path.stem}"
            loaded[method] = load_head(path)
        return cls(enc, name, loaded, query_instruction, doc_instruction,
                   identity=identity_key(model_identity(name)), dtype=dtype)

    # -- encoding --------------------------------------------------------------------------
    def texts(self, texts: list[str], kind: str) -> list[str]:
        if kind not in self.instruction:
            raise SmecError(f"kind must be 'query' or 'doc', got {kind!r}")
        prefix = self.instruction[kind]
        return [prefix + t for t in texts] if prefix else list(texts)

    def compress(self, x: np.ndarray, method: str, dim: int | None) -> np.ndarray:
        """Full-width embeddings (n, D) -> (n, dim), L2-normalised."""
        if dim is None or dim == self.full_dim or method == FULL:
            return x
        if not 0 < dim < self.full_dim:
            raise SmecError(f"dim {dim} is outside 1..{self.full_dim}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.no_grad():
            if method == TRUNCATE:
                out = F.normalize(t[:, :dim], dim=-1)
            elif method in self.heads:
                out = self.heads[method].compress(t, dim)
            else:
                raise SmecError(f"unknown method '{method}' (this model has {', '.join(self.methods)})")
        return out.numpy()

    def encode(self, texts: list[str], kind: str = "doc", dim: int | None = None, method: str | None = None,
               batch_size: int | None = None, progress: bool | None = None) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised; ``method`` defaults to the first head."""
        full = self.encoder.encode(self.texts(list(texts), kind), batch_size=batch_size or self.batch_size,
                                   progress=self.progress if progress is None else progress, desc=f"encode {kind}s")
        return self.compress(full, method or self.default_method, dim)

    def check(self, method: str, dim: int | None) -> None:
        """Fail before any encoding if ``method`` cannot give ``dim`` dims."""
        if method not in self.methods:
            raise SmecError(f"unknown method '{method}' (this model has {', '.join(self.methods)})")
        if dim is None or dim == self.full_dim:
            return
        if method == TRUNCATE:
            if not 0 < dim < self.full_dim:
                raise SmecError(f"dim {dim} is outside 1..{self.full_dim}")
        elif dim not in self.dims(method):
            raise SmecError(f"dim {dim} is not one of method '{method}''s dims {self.dims(method)} "
                            f"(or the full width {self.full_dim})")


def _export_identity(stage: Path, listed: dict | None) -> dict:
    """A stage export's identity: the digest of its files' sha256 table (its manifest, verified
    on load; computed here for an export that has none). A re-export gets new embeddings."""
    if listed is None:
        listed = file_table(stage, sorted(str(p.relative_to(stage)) for p in stage.rglob("*")
                                          if p.is_file() and "eval" not in p.relative_to(stage).parts))
    table = {rel: entry["sha256"] for rel, entry in listed.items()}
    return {"export_sha256": hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()}


# ------------------------------------------------------------------------------ evaluation


class Evaluation(Recipe):
    """``smec eval`` as setup -> run -> save: metrics of ``model`` on ``data.dataset`` /
    ``data.eval_split`` for every method and dim.

    Runs on one process or on every rank of ``accelerate launch`` (encoding sharded, search
    and metrics on rank 0, the result returned on every rank). Writes ``eval.json`` and
    ``eval.md`` into ``out_dir`` and keeps the embeddings under ``out_dir/embeddings``.
    """

    def __init__(self, model: SmecModel, cfg: Config, out_dir: str | Path, methods: list[str] | None = None,
                 mteb_tasks: list[str] | None = None, mteb_dim: int | None = None):
        self.model, self.cfg, self.out = model, cfg, Path(out_dir)
        self.methods, self.mteb_tasks, self.mteb_dim = methods or model.methods, mteb_tasks, mteb_dim

    def setup(self) -> None:
        """Every check before any encoding: the split, the methods, the MTEB tasks."""
        cfg, model = self.cfg, self.model
        self.ds = ds = load_beir(ensure_dataset(cfg.data.dataset, cfg.data.data_dir))
        self.split = split = cfg.data.eval_split
        if split not in ds.qrels:
            raise SmecError(f"data.eval_split: '{split}' is not a split of {ds.root} "
                            f"(it has {', '.join(sorted(ds.qrels)) or 'no qrels'})")
        for m in self.methods:
            model.check(m, None)
        if self.mteb_tasks:
            from ..evaluation.mteb_eval import check_tasks

            check_tasks(self.mteb_tasks, cfg.data.data_dir, split)
        self.identical = identical_ids(ds, cfg.data.ignore_identical_ids)
        log.info("%s: %s", ds.name, self.identical.describe())
        self.qrels = {q: d for q, d in ds.qrels[split].items() if q in ds.queries}
        self.qids = sorted(self.qrels)
        self.doc_ids = ds.doc_ids()

    def run(self) -> dict:
        cfg, model, ds, qids, doc_ids = self.cfg, self.model, self.ds, self.qids, self.doc_ids
        parts = {"corpus": (doc_ids, model.texts(ds.doc_texts(), "doc")),
                 "queries": (qids, model.texts([ds.queries[q] for q in qids], "query"))}
        rank, world = dist.rank(), dist.world_size()
        log.info("evaluating %s on %s %s (%d queries, %d documents), rank %d/%d", model.name, ds.name, self.split,
                 len(qids), len(doc_ids), rank, world)
        emb_dir = self.out / "embeddings"
        build_cache(emb_dir, model.encoder, model.name, parts, dataset_path=str(ds.root), dtype="float32",
                    shard_size=cfg.cache.shard_size, batch_size=cfg.model.batch_size, rank=rank, world_size=world,
                    barrier=dist.barrier, progress=cfg.run.show_progress() and dist.is_main(),
                    model_id=model.identity, model_dtype=model.dtype)
        result = None
        if dist.is_main():
            cache = load_cache(emb_dir)
            docs, queries = cache.embeddings("corpus"), cache.embeddings("queries")
            k = cfg.run.search_k
            ignore = self.identical.ignore
            metrics: dict[str, dict[str, dict]] = {FULL: {str(model.full_dim): search_metrics(
                docs, doc_ids, queries, qids, self.qrels, k=k, ignore_identical_ids=ignore)}}
            for m in self.methods:
                metrics[m] = {str(dim): search_metrics(model.compress(docs, m, dim), doc_ids,
                                                       model.compress(queries, m, dim), qids, self.qrels, k=k,
                                                       ignore_identical_ids=ignore)
                              for dim in model.dims(m)}
            result = {"model": model.name, "dataset": ds.name, "split": self.split, "queries": len(qids),
                      "documents": len(doc_ids), "world_size": world, "full_dim": model.full_dim,
                      "ignore_identical_ids": ignore, "metrics": metrics}
            self.write(result)  # the metrics are kept even if MTEB fails after them
        result = dist.broadcast_object(result)
        if self.mteb_tasks:
            result["mteb"] = run_mteb_tasks(model, self.mteb_tasks, cfg, self.out / "mteb", self.mteb_dim)
        return result

    def write(self, result: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "eval.json", result, indent=1)
        atomic_write_text(self.out / "eval.md", table(result))
        log.info("wrote %s", self.out / "eval.json")

    def save(self, result: dict) -> dict:
        if dist.is_main() and self.mteb_tasks:
            self.write(result)
        dist.barrier()
        return result


def evaluate_model(model: SmecModel, cfg: Config, out_dir: str | Path, methods: list[str] | None = None,
                   mteb_tasks: list[str] | None = None, mteb_dim: int | None = None) -> dict:
    """Run :class:`Evaluation`; returns its result on every rank."""
    return execute(Evaluation(model, cfg, out_dir, methods, mteb_tasks, mteb_dim))


def run_mteb_tasks(model: SmecModel, tasks: list[str], cfg: Config, out_dir: Path, dim: int | None) -> dict:
    """MTEB's evaluation of ``model`` at ``dim`` (rank 0 only: MTEB runs in one process)."""
    scores = None
    if dist.is_main():
        from ..evaluation.mteb_eval import run_mteb

        scores = run_mteb(model, tasks, cfg.data.data_dir, out_dir, dim=dim, split=cfg.data.eval_split,
                          batch_size=cfg.model.batch_size, ignore_identical_ids=cfg.data.ignore_identical_ids)
        for per in scores.values():  # some MTEB scores are NaN (nAUC on small sets): not in strict JSON
            per["metrics"] = {k: v for k, v in per["metrics"].items() if v == v}
    return dist.broadcast_object(scores)


def table(result: dict, metric: str = "nDCG@10") -> str:
    """A markdown table: one row per method, one column per dim."""
    dims = sorted({int(d) for per in result["metrics"].values() for d in per}, reverse=True)
    lines = [f"# {result['model']} on {result['dataset']} {result['split']} ({metric}; "
             f"{result['queries']} queries, {result['documents']} documents)", "",
             "| method | " + " | ".join(str(d) for d in dims) + " |",
             "|---|" + "---:|" * len(dims)]
    for method, per in result["metrics"].items():
        cells = [f"{per[str(d)][metric]:.4f}" if str(d) in per else "" for d in dims]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
