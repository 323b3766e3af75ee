"""``smec encode``: the embedding cache of a dataset, built once and shared by the jobs.

The cache is content-addressed: its default folder is named after a digest of everything that
decides the embeddings (the model's identity, not its name; pooling, max_length, dtypes; every
id and text), so a changed text, model or setting gets a new cache and is never served an old
one. Runs on one process or sharded over the ranks of ``accelerate launch`` (see
:mod:`smec_dist.cache` for the layout, resumption and sealing).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from .. import dist
from ..backbone import identity_key, load_encoder, model_identity, model_width, resolve_pooling
from ..cache import (MANIFEST, SPEC, build_cache, cache_spec, check_complete_cache, is_complete, load_cache,
                     spec_differences, spec_key)
from ..config import Config
from ..data import ensure_dataset, load_beir

log = logging.getLogger(__name__)

Parts = dict[str, tuple[list[str], list[str]]]


def dataset_parts(ds) -> Parts:
    """The corpus and the queries of a BEIR dataset, as cache parts ``{part: (ids, texts)}``."""
    return {"corpus": (ds.doc_ids(), ds.doc_texts()), "queries": (list(ds.queries), list(ds.queries.values()))}


def requested_spec(cfg: Config, parts: Parts, dataset_path: str = "") -> dict:
    """The spec the cache of ``parts`` must have under ``cfg`` (no model weights are loaded:
    the model's identity and width come from its files)."""
    pooling, append_eos = resolve_pooling(cfg.model.name, cfg.model.pooling, None)
    encoder = SimpleNamespace(pooling=pooling, normalize=True, max_length=cfg.model.max_length,
                              append_eos=append_eos, dim=model_width(cfg.model.name))
    return cache_spec(encoder, cfg.model.name, dataset_path, cfg.cache.dtype, cfg.cache.shard_size, parts,
                      model_id=identity_key(model_identity(cfg.model.name)), model_dtype=cfg.model.dtype)


def cache_dir_for(cfg: Config, spec: dict | None = None) -> Path:
    """``cache.dir``, else ``<cache.root>/<dataset>-<model>-<dtype>-<key>`` (``cache.root`` empty:
    ``<run.output_dir>/../cache``), ``key`` the first 12 hex digits of the spec's digest
    (default: the dataset's corpus and queries)."""
    if cfg.cache.dir:
        return Path(cfg.cache.dir)
    if spec is None:
        ds = load_beir(ensure_dataset(cfg.data.dataset, cfg.data.data_dir))
        spec = requested_spec(cfg, dataset_parts(ds), str(ds.root))
    model = Path(cfg.model.name).name or cfg.model.name
    stem = f"{Path(cfg.data.dataset).name}-{model}-{cfg.cache.dtype}"
    root = Path(cfg.cache.root) if cfg.cache.root else Path(cfg.run.output_dir).parent / "cache"
    return root / f"{stem}-{spec_key(spec)[:12]}"


def _say_why_new(cache_dir: Path, spec: dict) -> None:
    """Log what differs from the caches of the same dataset and model already there: a new cache
    is built because of that, and the log should say so."""
    stem = cache_dir.name.rsplit("-", 1)[0]
    for other in sorted(cache_dir.parent.glob(f"{stem}-*")):
        try:
            stored = json.loads((other / SPEC).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        diffs = spec_differences(stored, spec, layout=False) if isinstance(stored, dict) else []
        if diffs:
            what = ", ".join(key for key, _, _ in diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
            log.info("embedding cache %s holds other embeddings (%s differ): building a new one at %s",
                     other, what, cache_dir)


def encode(cfg: Config, ds=None, extra_texts: Parts | None = None, cache_dir: Path | None = None) -> Path:
    """Build (or finish, or reuse) the embedding cache of the corpus and the queries.

    Args:
        cfg: model, cache and data settings.
        ds: the loaded dataset (default: ``data.dataset``).
        extra_texts: parts to encode instead of the corpus and queries: ``{part: (ids, texts)}``.
        cache_dir: default :func:`cache_dir_for` the spec of these parts.
    """
    if ds is None:
        ds = load_beir(ensure_dataset(cfg.data.dataset, cfg.data.data_dir))
    parts = extra_texts or dataset_parts(ds)
    named = cache_dir or cfg.cache.dir
    if named and (Path(named) / MANIFEST).exists():
        # A sealed cache that is damaged (malformed manifest, a shard missing or truncated)
        # cannot be repaired by encoding again: name the file now, before a model is touched.
        load_cache(named, verify=False)
    spec = requested_spec(cfg, parts, str(ds.root))
    cache_dir = Path(named or cache_dir_for(cfg, spec))
    if not named and (cache_dir / MANIFEST).exists():
        load_cache(cache_dir, verify=False)
    if is_complete(cache_dir):
        check_complete_cache(cache_dir, spec)
        log.info("embedding cache %s is complete and matches (model, settings and every text): reusing it",
                 cache_dir)
        return cache_dir
    if not cfg.cache.dir and dist.is_main():
        _say_why_new(cache_dir, spec)
    encoder = load_encoder(cfg.model.name, pooling=cfg.model.pooling, max_length=cfg.model.max_length,
                           device=cfg.model.device, dtype=cfg.model.dtype)
    build_cache(cache_dir, encoder, cfg.model.name, parts, dataset_path=str(ds.root), dtype=cfg.cache.dtype,
                shard_size=cfg.cache.shard_size, batch_size=cfg.model.batch_size, rank=dist.rank(),
                world_size=dist.world_size(), barrier=dist.barrier, progress=cfg.run.show_progress() and dist.is_main(),
                model_id=spec["model_id"], model_dtype=cfg.model.dtype)
    dist.barrier()
    return cache_dir
