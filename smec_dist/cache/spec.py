"""What a cache holds (its spec): described, compared, and pinned in ``spec.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import SmecError
from ..io import atomic_write_bytes
from .format import (FORMAT, LAYOUT_KEYS, MANIFEST, PART_KEYS, PART_NAME, SPEC, SPEC_KEYS, ids_sha256, normalize_dtype,
                     read_json, spec_bytes, texts_sha256)

def cache_spec(encoder, model_name: str, dataset_path: str | os.PathLike | None, dtype: str,
               shard_size: int, parts: Mapping[str, tuple[Sequence[str], Sequence[str]]],
               model_id: Mapping | None = None, model_dtype: str = "float32") -> dict:
    """Describes what a cache holds; two caches with equal specs hold the same embeddings.

    Args:
        encoder: The :class:`~smec_dist.backbone.Encoder`, or anything with its ``pooling``,
            ``normalize``, ``max_length``, ``append_eos`` and ``dim`` (they are recorded).
        model_name: The model as the user named it (alias, folder or hub id); for the record.
        dataset_path: The dataset folder, recorded for information only.
        dtype: ``float16`` or ``float32`` (``fp16``/``fp32`` accepted).
        shard_size: Items per shard.
        parts: Part name (``corpus``, ``queries``) -> ``(ids, texts)`` in item order.
        model_id: What the model is (:func:`smec_dist.backbone.model_identity`'s content
            part); default: its name.
        model_dtype: The dtype the model runs in (it changes the embeddings).

    Returns:
        A JSON-serialisable dict; ``parts`` maps each part to its ``count``, ``ids_sha256`` and
        ``texts_sha256``.

    Raises:
        SmecError: On a bad dtype, shard size or part name.
    """
    dtype = normalize_dtype(dtype)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise SmecError(f"cache shard_size must be a positive integer, got {shard_size!r}")
    if not parts:
        raise SmecError("nothing to encode: no parts (corpus, queries) were given")
    for name in parts:
        if not isinstance(name, str) or not PART_NAME.match(name):
            raise SmecError(f"cache part name {name!r} must be a simple folder name like 'corpus'")
    return {
        "format": FORMAT,
        "model": str(model_name),
        "model_id": dict(model_id) if model_id else {"name": str(model_name)},
        "model_dtype": str(model_dtype),
        "pooling": str(encoder.pooling),
        "normalize": bool(encoder.normalize),
        "max_length": int(encoder.max_length),
        "append_eos": bool(encoder.append_eos),
        "dim": int(encoder.dim),
        "dtype": dtype,
        "shard_size": int(shard_size),
        "dataset": str(Path(dataset_path).resolve()) if dataset_path else "",
        "parts": {name: {"count": len(ids), "ids_sha256": ids_sha256(list(ids)),
                         "texts_sha256": texts_sha256(list(ids), list(texts))}
                  for name, (ids, texts) in parts.items()},
    }


def spec_differences(stored: Mapping, requested: Mapping, layout: bool = True) -> list[tuple[str, Any, Any]]:
    """Lists ``(key, stored value, requested value)`` for each identifying key that differs
    (with ``layout=False``, the shard size is not compared).

    Part fields are dotted (``parts.corpus.ids_sha256``); a part present on one side only
    shows as ``parts.<name>`` with ``None`` on the other side.
    """
    keys = [k for k in SPEC_KEYS if k != "parts" and (layout or k not in LAYOUT_KEYS)]
    diffs = [(k, stored.get(k), requested.get(k)) for k in keys if stored.get(k) != requested.get(k)]
    old_parts = stored.get("parts") if isinstance(stored.get("parts"), dict) else {}
    new_parts = requested.get("parts") or {}
    for name in dict.fromkeys([*new_parts, *old_parts]):
        old, new = old_parts.get(name), new_parts.get(name)
        if old is None or new is None or not isinstance(old, dict):
            if old != new:
                diffs.append((f"parts.{name}", old, new))
            continue
        diffs += [(f"parts.{name}.{k}", old.get(k), new.get(k)) for k in PART_KEYS
                  if old.get(k) != new.get(k)]
    return diffs


def check_complete_cache(cache_dir: str | os.PathLike, requested: Mapping) -> None:
    """Refuse to reuse a complete cache built for something else (model, pooling, ids ...).

    ``requested`` is a :func:`cache_spec`-shaped dict; keys it lacks are not compared.
    """
    root = Path(cache_dir)
    stored = read_json(root / SPEC, "cache spec")
    stored = {k: v for k, v in stored.items() if k in requested} if isinstance(stored, dict) else {}
    diffs = spec_differences(stored, requested, layout=False)  # keys absent on both sides compare equal
    if diffs:
        raise _mismatch(root, diffs)


def _mismatch(root: Path, diffs: list[tuple[str, Any, Any]]) -> SmecError:
    key, old, new = diffs[0]
    more = f" (and {len(diffs) - 1} more difference{'s' * (len(diffs) > 2)})" if len(diffs) > 1 else ""
    return SmecError(f"{root / SPEC}: this cache was built with {key}={_show(old)} but this run asks for "
                     f"{key}={_show(new)}{more}; choose another cache dir or delete {root}")


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value)


def check_spec(root: Path, spec: dict) -> None:
    """Compares ``spec.json`` with ``spec``, or writes it when the folder is fresh.

    Every rank runs this and may write the file. The content is byte-identical on all ranks,
    so concurrent writes are harmless, and it lets any rank start first (a rank that starts
    before rank 0 must not write shards into a folder whose spec nobody has recorded yet).
    """
    spec_path = root / SPEC
    # Look for shards before looking for spec.json: every writer records spec.json before its
    # first shard, so shards found first imply spec.json exists unless someone deleted it.
    stray = root.exists() and ((root / MANIFEST).exists() or any(
        sub.is_dir() and any(sub.glob("shard-*.safetensors")) for sub in root.iterdir()))
    if spec_path.exists():
        stored = read_json(spec_path, "cache spec")
        if not isinstance(stored, dict):
            raise SmecError(f"{spec_path}: malformed cache spec (not a JSON object)")
        diffs = spec_differences(stored, spec)
        if diffs:
            raise _mismatch(root, diffs)
        return
    if stray:
        raise SmecError(
            f"{spec_path}: missing, but {root} already holds shards of an unknown spec; "
            f"choose another cache dir or delete {root}"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(spec_path, spec_bytes(spec))  # a temporary name per process: ranks may race here
