"""The on-disk embedding cache: frozen-backbone embeddings of a corpus and its queries.

Layout of a cache folder::

    <cache_dir>/spec.json                        # what is being encoded (written first)
    <cache_dir>/<part>/shard-00000.safetensors   # tensor "emb" (rows, dim), fp16 or fp32
    <cache_dir>/<part>/ids.json                  # the part's ids, in item order
    <cache_dir>/manifest.json                    # written last: the cache is complete

Shard ``i`` of a part always covers items ``[i * shard_size, (i + 1) * shard_size)``, so a
shard is identified by its index alone and is "done" exactly when its final file exists:
every file is written to ``*.tmp`` and renamed into place, and a rename is atomic. This is
what makes encoding resumable (a re-run encodes only the shards that are missing) and
splittable across ranks (rank ``r`` encodes the shards ``i`` with ``i % world_size == r``).

``manifest.json`` is written by rank 0 only after every shard exists, and carries each
shard's sha256; a folder without it is an unfinished cache and :func:`load_cache` refuses
it. ``spec.json`` pins the model, pooling, dtype, shard size and the ids of each part, so a
re-run with different settings in the same folder fails instead of mixing embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import safetensors.numpy

from .errors import SmecError
from .io import atomic_write_bytes, file_sha256, json_bytes

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
SPEC = "spec.json"
IDS = "ids.json"
TENSOR = "emb"

DTYPES = {"float16": np.float16, "float32": np.float32}
_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "f16": "float16",
                  "fp32": "float32", "float": "float32", "f32": "float32"}
_SAFETENSORS_DTYPES = {"float16": "F16", "float32": "F32"}
_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Keys of spec.json that identify the embeddings. "dataset" is stored for the record but not
# compared: the same dataset reached through another path (or moved) yields the same cache,
# and the ids sha already tells a different dataset apart.
_SPEC_KEYS = ("format", "model", "pooling", "normalize", "max_length", "append_eos", "dim",
              "dtype", "shard_size", "parts")
_UNCOMPARED_SPEC_KEYS = ("dataset",)


# --------------------------------------------------------------------------- small helpers


def ids_sha256(ids: Sequence[str]) -> str:
    """Returns the sha256 hex digest of ``"\\n".join(ids)``."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def shard_name(index: int) -> str:
    """Returns the file name of shard ``index`` (``shard-00000.safetensors``)."""
    return f"shard-{index:05d}.safetensors"


def num_shards(count: int, shard_size: int) -> int:
    """Returns how many shards hold ``count`` items (0 for an empty part)."""
    return math.ceil(count / shard_size)


def _normalize_dtype(dtype: str) -> str:
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise SmecError(f"cache dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    return name


def _json_bytes(obj: Any) -> bytes:
    # sort_keys: every rank must produce byte-identical spec.json content (see build_cache)
    return json_bytes(obj, indent=2, sort_keys=True)


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SmecError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SmecError(f"{path}: line {exc.lineno}: malformed {what} JSON: {exc.msg}") from exc


def _read_safetensors_header(path: Path) -> dict:
    """Parses a safetensors header (8-byte little-endian length, then JSON) without the data.

    Also checks that the file is as long as the header says, which catches truncated files
    cheaply (a rename that survived a crash its data did not).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise SmecError(f"{path}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise SmecError(f"{path}: not a safetensors file (header length {n} > file size {size})")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SmecError(f"{path}: corrupted safetensors header") from exc
    entry = header.get(TENSOR) if isinstance(header, dict) else None
    if not isinstance(entry, dict) or "shape" not in entry or "data_offsets" not in entry:
        raise SmecError(f"{path}: no tensor '{TENSOR}' in the shard")
    if 8 + n + int(entry["data_offsets"][1]) > size:
        raise SmecError(f"{path}: truncated shard ({size} bytes, header promises more)")
    return entry


def _check_shard_header(path: Path, rows: int, dim: int, dtype: str, hint: str) -> None:
    """Raises :class:`SmecError` unless the shard holds ``emb`` of shape (rows, dim) in dtype."""
    entry = _read_safetensors_header(path)
    shape = [int(x) for x in entry["shape"]]
    if len(shape) != 2 or shape[1] != dim:
        raise SmecError(f"{path}: shard has shape {shape} but the cache dim is {dim}; {hint}")
    if shape[0] != rows:
        raise SmecError(f"{path}: shard has {shape[0]} rows, expected {rows}; {hint}")
    if entry.get("dtype") != _SAFETENSORS_DTYPES[dtype]:
        raise SmecError(f"{path}: shard dtype {entry.get('dtype')} differs from the cache dtype {dtype}; {hint}")


# --------------------------------------------------------------------------- spec


def cache_spec(encoder, model_name: str, dataset_path: str | os.PathLike | None, dtype: str,
               shard_size: int, parts: Mapping[str, Sequence[str]]) -> dict:
    """Describes what a cache holds; two caches with equal specs hold the same embeddings.

    Args:
        encoder: The :class:`~smec_dist.backbone.Encoder` (its pooling, normalize,
            max_length, append_eos and dim are recorded).
        model_name: The model as the user named it (alias, folder or hub id).
        dataset_path: The dataset folder, recorded for information only.
        dtype: ``float16`` or ``float32`` (``fp16``/``fp32`` accepted).
        shard_size: Items per shard.
        parts: Part name (``corpus``, ``queries``) -> ids in item order.

    Returns:
        A JSON-serialisable dict; ``parts`` maps each part to its ``count`` and ``ids_sha256``.

    Raises:
        SmecError: On a bad dtype, shard size or part name.
    """
    dtype = _normalize_dtype(dtype)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise SmecError(f"cache shard_size must be a positive integer, got {shard_size!r}")
    if not parts:
        raise SmecError("nothing to encode: no parts (corpus, queries) were given")
    for name in parts:
        if not isinstance(name, str) or not _PART_NAME.match(name):
            raise SmecError(f"cache part name {name!r} must be a simple folder name like 'corpus'")
    return {
        "format": FORMAT,
        "model": str(model_name),
        "pooling": str(encoder.pooling),
        "normalize": bool(encoder.normalize),
        "max_length": int(encoder.max_length),
        "append_eos": bool(encoder.append_eos),
        "dim": int(encoder.dim),
        "dtype": dtype,
        "shard_size": int(shard_size),
        "dataset": str(Path(dataset_path).resolve()) if dataset_path else "",
        "parts": {name: {"count": len(ids), "ids_sha256": ids_sha256(list(ids))}
                  for name, ids in parts.items()},
    }


def spec_differences(stored: Mapping, requested: Mapping) -> list[tuple[str, Any, Any]]:
    """Lists ``(key, stored value, requested value)`` for each identifying key that differs.

    Part fields are dotted (``parts.corpus.ids_sha256``); a part present on one side only
    shows as ``parts.<name>`` with ``None`` on the other side.
    """
    diffs = [(k, stored.get(k), requested.get(k)) for k in _SPEC_KEYS
             if k != "parts" and stored.get(k) != requested.get(k)]
    old_parts = stored.get("parts") if isinstance(stored.get("parts"), dict) else {}
    new_parts = requested.get("parts") or {}
    for name in dict.fromkeys([*new_parts, *old_parts]):
        old, new = old_parts.get(name), new_parts.get(name)
        if old is None or new is None or not isinstance(old, dict):
            if old != new:
                diffs.append((f"parts.{name}", old, new))
            continue
        diffs += [(f"parts.{name}.{k}", old.get(k), new.get(k)) for k in ("count", "ids_sha256")
                  if old.get(k) != new.get(k)]
    return diffs


def check_complete_cache(cache_dir: str | os.PathLike, requested: Mapping) -> None:
    """Refuse to reuse a complete cache built for something else (model, pooling, ids ...).

    ``requested`` is a :func:`cache_spec`-shaped dict; keys it lacks are not compared.
    """
    root = Path(cache_dir)
    stored = _read_json(root / SPEC, "cache spec")
    stored = {k: v for k, v in stored.items() if k in requested} if isinstance(stored, dict) else {}
    diffs = spec_differences(stored, requested)  # keys absent on both sides compare equal
    if diffs:
        raise _mismatch(root, diffs)


def _mismatch(root: Path, diffs: list[tuple[str, Any, Any]]) -> SmecError:
    key, old, new = diffs[0]
    more = f" (and {len(diffs) - 1} more difference{'s' * (len(diffs) > 2)})" if len(diffs) > 1 else ""
    return SmecError(f"{root / SPEC}: this cache was built with {key}={_show(old)} but this run asks for "
                     f"{key}={_show(new)}{more}; choose another cache dir or delete {root}")


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value)


def _check_spec(root: Path, spec: dict) -> None:
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
        stored = _read_json(spec_path, "cache spec")
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
    atomic_write_bytes(spec_path, _json_bytes(spec))  # a temporary name per process: ranks may race here


# --------------------------------------------------------------------------- build


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
    spec = cache_spec(encoder, model_name, dataset_path, dtype, shard_size, ids_of)
    dtype = spec["dtype"]
    _check_spec(root, spec)

    if (root / MANIFEST).exists():
        # A sealed cache with a matching spec: nothing to do. Every rank sees the same state
        # here (the manifest is only ever written after the barrier), so all take this branch.
        log.info("%s: cache already complete (matching spec); nothing to encode", root)
        barrier()
        if rank != 0:
            return None
        load_cache(root, verify=False)  # structure only; readers verify checksums on load
        return root / MANIFEST

    for name in ids_of:
        _encode_part(root, encoder, name, texts_of[name], dtype, shard_size, batch_size,
                     rank, world_size, progress)
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
    todo = [i for i in mine if not (folder / shard_name(i)).exists()]
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
            _check_shard_header(path, rows, dim, dtype, hint)
            shards.append({"file": f"{name}/{shard_name(i)}", "rows": rows, "sha256": file_sha256(path)})
        atomic_write_bytes(folder / IDS, _json_bytes(ids))
        manifest_parts[name] = {**spec["parts"][name], "shards": shards}
    for folder in (root, *(root / name for name in ids_of)):
        for tmp in folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # leftovers of killed runs; no rank writes any more
    manifest = {k: spec[k] for k in (*_SPEC_KEYS, *_UNCOMPARED_SPEC_KEYS) if k != "parts"}
    manifest["parts"] = manifest_parts
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = root / MANIFEST
    atomic_write_bytes(path, _json_bytes(manifest))
    log.info("%s: cache complete: %s", root,
             ", ".join(f"{n} {p['count']} items in {len(p['shards'])} shards" for n, p in manifest_parts.items()))
    return path


# --------------------------------------------------------------------------- load


@dataclass
class EmbeddingCache:
    """A complete cache, as returned by :func:`load_cache`.

    Attributes:
        root: The cache folder.
        manifest: The parsed ``manifest.json``.
    """

    root: Path
    manifest: dict
    _ids: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return int(self.manifest["dim"])

    @property
    def parts(self) -> list[str]:
        """The part names (``corpus``, ``queries``)."""
        return list(self.manifest["parts"])

    def count(self, part: str) -> int:
        """Returns the number of items in ``part``."""
        return int(self._part(part)["count"])

    def _part(self, part: str) -> dict:
        if part not in self.manifest["parts"]:
            raise SmecError(f"{self.root / MANIFEST}: no part '{part}' in the cache "
                            f"(has: {', '.join(self.parts) or 'none'})")
        return self.manifest["parts"][part]

    def ids(self, part: str) -> list[str]:
        """Returns the ids of ``part`` in item order (row ``k`` of :meth:`embeddings` is ``ids[k]``)."""
        if part not in self._ids:
            info = self._part(part)
            path = self.root / part / IDS
            if not path.exists():
                raise SmecError(f"{path}: missing; the cache is damaged, re-run `smec encode`")
            ids = _read_json(path, "ids")
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise SmecError(f"{path}: malformed ids (expected a JSON list of strings)")
            if len(ids) != info["count"] or ids_sha256(ids) != info["ids_sha256"]:
                raise SmecError(f"{path}: ids do not match the manifest (count or ids_sha256)")
            self._ids[part] = ids
        return list(self._ids[part])

    def embeddings(self, part: str, dtype: Any = np.float32) -> np.ndarray:
        """Returns all embeddings of ``part``, shards concatenated in item order.

        Args:
            part: ``corpus`` or ``queries``.
            dtype: The returned dtype (stored fp16 is widened losslessly to fp32).

        Returns:
            An array of shape (count, dim).
        """
        info = self._part(part)
        out = np.empty((int(info["count"]), self.dim), dtype=dtype)
        row = 0
        for shard in info["shards"]:
            path = self.root / shard["file"]
            try:
                emb = safetensors.numpy.load_file(str(path))[TENSOR]
            except Exception as exc:  # safetensors raises its own error types, not OSError
                first = str(exc).splitlines()[0] if str(exc) else repr(exc)
                raise SmecError(f"{path}: cannot read shard: {first}") from exc
            if emb.shape != (shard["rows"], self.dim):
                raise SmecError(f"{path}: shard has shape {list(emb.shape)}, manifest says "
                                f"({shard['rows']}, {self.dim})")
            out[row:row + len(emb)] = emb
            row += len(emb)
        return out


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise SmecError(f"{path}: malformed manifest: {what}")


def _validate_manifest(path: Path, manifest: Any) -> None:
    _require(isinstance(manifest, dict), path, "not a JSON object")
    _require(manifest.get("format") == FORMAT, path,
             f"format {manifest.get('format')!r}, this version reads format {FORMAT}")
    for key, typ in (("model", str), ("pooling", str), ("normalize", bool), ("max_length", int),
                     ("append_eos", bool), ("dim", int), ("dtype", str), ("shard_size", int),
                     ("parts", dict)):
        _require(key in manifest, path, f"key '{key}' missing")
        _require(isinstance(manifest[key], typ), path, f"key '{key}' is not a {typ.__name__}")
    _require(manifest["dtype"] in DTYPES, path, f"dtype '{manifest['dtype']}' not one of {', '.join(DTYPES)}")
    _require(manifest["dim"] > 0, path, "dim must be positive")
    for name, part in manifest["parts"].items():
        where = f"parts.{name}"
        _require(isinstance(part, dict), path, f"{where} is not an object")
        for key, typ in (("count", int), ("ids_sha256", str), ("shards", list)):
            _require(isinstance(part.get(key), typ), path, f"{where}.{key} missing or not a {typ.__name__}")
        for k, shard in enumerate(part["shards"]):
            ok = (isinstance(shard, dict) and isinstance(shard.get("file"), str)
                  and isinstance(shard.get("rows"), int) and isinstance(shard.get("sha256"), str))
            _require(ok, path, f"{where}.shards[{k}] needs file, rows and sha256")
            rel = Path(shard["file"])
            _require(not rel.is_absolute() and ".." not in rel.parts, path,
                     f"{where}.shards[{k}].file must be a path inside the cache")
        rows = sum(s["rows"] for s in part["shards"])
        _require(rows == part["count"], path,
                 f"{where}: shard rows add up to {rows} but count is {part['count']}")


def load_cache(cache_dir: str | os.PathLike, verify: bool = True) -> EmbeddingCache:
    """Opens a complete cache.

    Args:
        cache_dir: The cache folder.
        verify: Check every shard's sha256 against the manifest (reads all shards once).
            Without it only existence, shape and dtype (from the shard headers) are checked.

    Returns:
        The :class:`EmbeddingCache`.

    Raises:
        SmecError: The folder or manifest is missing (an unfinished cache), the manifest is
            malformed, or a shard is missing, truncated, of the wrong shape or corrupted.
    """
    root = Path(cache_dir)
    rerun = "re-run `smec encode` with the same settings to finish it"
    if not root.is_dir():
        raise SmecError(f"{root}: no embedding cache here; run `smec encode` to build it")
    path = root / MANIFEST
    if not path.exists():
        raise SmecError(f"{path}: missing, so the cache is incomplete (an interrupted encoding?); {rerun}")
    manifest = _read_json(path, "manifest")
    _validate_manifest(path, manifest)
    dim, dtype = manifest["dim"], manifest["dtype"]
    for name, part in manifest["parts"].items():
        if not (root / name / IDS).exists():
            raise SmecError(f"{root / name / IDS}: missing; delete {path} and {rerun}")
        for shard in part["shards"]:
            shard_path = root / shard["file"]
            if not shard_path.exists():
                raise SmecError(f"{shard_path}: shard listed in the manifest is missing; "
                                f"delete {path} and {rerun}")
            hint = f"the shard is damaged; delete it and {path}, then {rerun}"
            _check_shard_header(shard_path, shard["rows"], dim, dtype, hint)
            if verify and file_sha256(shard_path) != shard["sha256"]:
                raise SmecError(f"{shard_path}: sha256 differs from the manifest, the shard is "
                                f"corrupted; delete it and {path}, then {rerun}")
    return EmbeddingCache(root=root, manifest=manifest)


def is_complete(cache_dir: str | os.PathLike) -> bool:
    """Returns whether ``cache_dir`` holds a sealed cache whose shards all exist (no hashing)."""
    try:
        load_cache(cache_dir, verify=False)
    except SmecError:
        return False
    return True
