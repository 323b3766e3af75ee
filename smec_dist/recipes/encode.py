"""``smec encode``: the embedding cache of a dataset, built once and shared by the jobs.

Runs on one process or sharded over the ranks of ``accelerate launch`` (see
:mod:`smec_dist.cache` for the layout, resumption and sealing).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import dist
from ..backbone import load_encoder, resolve_pooling
from ..cache import MANIFEST, build_cache, check_complete_cache, ids_sha256, is_complete, load_cache
from ..config import Config
from ..data import ensure_dataset, load_beir

log = logging.getLogger(__name__)


def cache_dir_for(cfg: Config) -> Path:
    """``cache.dir``, else ``<run.output_dir>/../cache/<dataset>-<model>-<dtype>``."""
    if cfg.cache.dir:
        return Path(cfg.cache.dir)
    model = Path(cfg.model.name).name or cfg.model.name
    return Path(cfg.run.output_dir).parent / "cache" / f"{Path(cfg.data.dataset).name}-{model}-{cfg.cache.dtype}"


def encode(cfg: Config, ds=None, extra_texts: dict[str, tuple[list[str], list[str]]] | None = None,
           cache_dir: Path | None = None) -> Path:
    """Build (or finish, or reuse) the embedding cache of the corpus and the queries.

    Args:
        cfg: model, cache and data settings.
        ds: the loaded dataset (default: ``data.dataset``).
        extra_texts: parts to encode instead of the corpus and queries: ``{part: (ids, texts)}``.
        cache_dir: default :func:`cache_dir_for`.
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
