"""Encoding a cache: each rank its shards, resumable, then sealed by rank 0 with a manifest."""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import safetensors.numpy

from ..errors import SmecError
from ..io import atomic_write_bytes, file_sha256
from .format import (DTYPES, IDS, MANIFEST, SPEC_KEYS, TENSOR, UNCOMPARED_SPEC_KEYS, check_shard_header, num_shards,
                     shard_name, spec_bytes)
from .load import load_cache
from .spec import cache_spec, check_spec

log = logging.getLogger(__name__)


def build_cache(
    cache_dir: str | os.PathLike,
    encoder,
    model_name: str,
    parts: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    dataset_path: str = "",
    dtype: str = "float16",
    shard_size: int = 2048,
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], Any] = lambda: None,
    progress: bool = True,
    model_id: Mapping | None = None,
    model_dtype: str = "float32",
) -> Path | None:
    """Encodes the missing shards of each part, then (rank 0) checksums them and seals the cache.

    Rank ``rank`` encodes the shards ``i`` with ``i % world_size == rank`` whose file is not
    on disk yet, so a re-run after a kill encodes only what is missing. After ``barrier()``
    rank 0 checks that every shard exists and has the right shape, writes ``<part>/ids.json``
    and, last, ``manifest.json`` with each shard's sha256.

    Args:
        cache_dir: The cache folder (created if needed).
        encoder: An :class:`~smec_dist.backbone.Encoder` (anything with ``encode``,
            ``dim``, ``pooling``, ``normalize``, ``max_length``, ``append_eos``).
        model_name: The model as the user named it; recorded in the spec.
        parts: Part name -> ``(ids, texts)``, e.g. ``{"corpus": (...), "queries": (...)}``.
        dataset_path: The dataset folder, recorded in the manifest.
        dtype: Storage dtype, ``float16`` (half the disk) or ``float32``.
        shard_size: Items per shard; also the unit of resumption.
        batch_size: Encoding batch size.
        rank: This process's index (``accelerate.PartialState().process_index``).
        world_size: Number of processes (``PartialState().num_processes``).
        barrier: Waits for all processes (``PartialState().wait_for_everyone``).
        progress: Show a progress bar per shard.
        model_id / model_dtype: what the model is and the dtype it runs in (:func:`cache_spec`).

    A shard written by an earlier, interrupted run is trusted only when its sha256 matches the
    record written right after it (``shard-XXXXX.sha256``); any other shard is encoded again.

    Returns:
        The manifest path on rank 0, ``None`` on other ranks.

    Raises:
        SmecError: On a spec mismatch with the folder's ``spec.json``, mismatched ids/texts,
            non-finite embeddings, or a shard found missing or malformed when sealing.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise SmecError(f"world_size must be a positive integer, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise SmecError(f"rank must be in [0, {world_size}), got {rank!r}")
    root = Path(cache_dir)
    if root.exists() and not root.is_dir():
        raise SmecError(f"{root}: cache dir exists but is not a folder")
    ids_of: dict[str, list[str]] = {}
    texts_of: dict[str, list[str]] = {}
    for name, pair in parts.items():
        try:
            ids, texts = pair
        except (TypeError, ValueError) as exc:
            raise SmecError(f"cache part '{name}' must be an (ids, texts) pair") from exc
        ids_of[name], texts_of[name] = [str(i) for i in ids], list(texts)
        if len(ids_of[name]) != len(texts_of[name]):
            raise SmecError(f"cache part '{name}': {len(ids_of[name])} ids but {len(texts_of[name])} texts")
        if len(set(ids_of[name])) != len(ids_of[name]):
            seen: set[str] = set()
            dup = next(i for i in ids_of[name] if i in seen or seen.add(i))
            raise SmecError(f"cache part '{name}': id '{dup}' occurs more than once")
    spec = cache_spec(encoder, model_name, dataset_path, dtype, shard_size,
                      {name: (ids_of[name], texts_of[name]) for name in ids_of}, model_id, model_dtype)
    dtype = spec["dtype"]
    try:
        check_spec(root, spec)
    except OSError as exc:  # an unwritable cache folder: say so, before any model time is spent
        raise SmecError(f"{exc.filename or root}: cannot write the embedding cache ({exc.strerror or exc})") from None

    if (root / MANIFEST).exists():
        # A sealed cache with a matching spec: nothing to do. Every rank sees the same state
        # here (the manifest is only ever written after the barrier), so all take this branch.
        log.info("%s: cache already complete (matching spec); nothing to encode", root)
        barrier()
        if rank != 0:
            return None
        load_cache(root, verify=False)  # structure only; readers verify checksums on load
        return root / MANIFEST

    try:
        for name in ids_of:
            _encode_part(root, encoder, name, texts_of[name], dtype, shard_size, batch_size,
                         rank, world_size, progress)
    except OSError as exc:  # a full disk, a permission: the shards written so far stay valid
        raise SmecError(f"{exc.filename or root}: cannot write the embedding cache ({exc.strerror or exc})") from None
    barrier()
    if rank != 0:
        return None
    return _seal(root, spec, ids_of)


def _encode_part(root: Path, encoder, part: str, texts: list[str], dtype: str, shard_size: int,
                 batch_size: int, rank: int, world_size: int, progress: bool) -> None:
    """Encodes this rank's missing shards of one part."""
    folder = root / part
    folder.mkdir(parents=True, exist_ok=True)
    total = num_shards(len(texts), shard_size)
    mine = list(range(rank, total, world_size))
    todo = [i for i in mine if not _shard_done(folder, i)]
    log.info("%s: rank %d/%d: %d of its %d shards already done, encoding %d (of %d shards in all)",
             part, rank, world_size, len(mine) - len(todo), len(mine), len(todo), total)
    np_dtype = DTYPES[dtype]
    for i in todo:
        lo, hi = i * shard_size, min((i + 1) * shard_size, len(texts))
        emb = np.asarray(encoder.encode(texts[lo:hi], batch_size=batch_size, progress=progress,
                                        desc=f"{part} shard {i + 1}/{total}"))
        if emb.shape != (hi - lo, encoder.dim):
            raise SmecError(f"encoder returned shape {emb.shape} for {part} shard {i}, "
                            f"expected ({hi - lo}, {encoder.dim})")
        stored = np.ascontiguousarray(emb.astype(np_dtype))  # (rows, dim)
        if not np.isfinite(stored).all():
            # fp16 overflows above 65504; un-normalised LLM states can get there
            hint = "; use cache dtype float32" if dtype == "float16" and np.isfinite(emb).all() else ""
            raise SmecError(f"{part} shard {i} (items {lo}..{hi - 1}): non-finite embeddings "
                            f"in {dtype}{hint}")
        data = safetensors.numpy.save({TENSOR: stored})
        atomic_write_bytes(folder / shard_name(i), data)
        # written after the shard: a shard without its record (or not matching it) is redone
        atomic_write_bytes(_record(folder, i), hashlib.sha256(data).hexdigest().encode())


def _record(folder: Path, index: int) -> Path:
    return folder / (shard_name(index) + ".sha256")


def _shard_done(folder: Path, index: int) -> str | None:
    """The sha256 of a finished shard of an unsealed cache: only when its bytes match the record
    written after it (``None``: missing, unrecorded or altered, so it is encoded again)."""
    path, record = folder / shard_name(index), _record(folder, index)
    if not (path.is_file() and record.is_file()):
        return None
    digest = file_sha256(path)
    if digest == record.read_text(encoding="utf-8").strip():
        return digest
    log.warning("%s: does not match its checksum record: encoding it again", path)
    return None


def _seal(root: Path, spec: dict, ids_of: dict[str, list[str]]) -> Path:
    """Rank 0, after all ranks finished: verify shards, write ids and the manifest."""
    dim, dtype, shard_size = spec["dim"], spec["dtype"], spec["shard_size"]
    hint = "delete it and re-run `smec encode` to re-encode it"
    manifest_parts: dict[str, dict] = {}
    for name, ids in ids_of.items():
        folder = root / name
        shards = []
        for i in range(num_shards(len(ids), shard_size)):
            path = folder / shard_name(i)
            if not path.exists():
                raise SmecError(f"{path}: shard missing after all ranks finished; "
                                f"re-run `smec encode` with the same settings to encode it")
            rows = min(shard_size, len(ids) - i * shard_size)
            check_shard_header(path, rows, dim, dtype, hint)
            digest = _shard_done(folder, i)
            if digest is None:
                raise SmecError(f"{path}: no valid checksum record after all ranks finished; {hint}")
            shards.append({"file": f"{name}/{shard_name(i)}", "rows": rows, "sha256": digest})
        atomic_write_bytes(folder / IDS, spec_bytes(ids))
        manifest_parts[name] = {**spec["parts"][name], "shards": shards}
    for folder in (root, *(root / name for name in ids_of)):
        for tmp in folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # leftovers of killed runs; no rank writes any more
    manifest = {k: spec[k] for k in (*SPEC_KEYS, *UNCOMPARED_SPEC_KEYS) if k != "parts"}
    manifest["parts"] = manifest_parts
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = root / MANIFEST
    atomic_write_bytes(path, spec_bytes(manifest))
    log.info("%s: cache complete: %s", root,
             ", ".join(f"{n} {p['count']} items in {len(p['shards'])} shards" for n, p in manifest_parts.items()))
    return path
