"""Reading a complete cache: the manifest validated, every shard checked (and its sha256)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from ..errors import SmecError
from ..io import file_sha256
from .format import DTYPES, FORMAT, IDS, MANIFEST, TENSOR, check_shard_header, ids_sha256, read_json

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
            ids = read_json(path, "ids")
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
    for key, typ in (("model", str), ("model_id", dict), ("model_dtype", str), ("pooling", str),
                     ("normalize", bool), ("max_length", int),
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
    manifest = read_json(path, "manifest")
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
            check_shard_header(shard_path, shard["rows"], dim, dtype, hint)
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
