"""What a cache folder holds on disk: names, dtypes, digests, the shard header check.

Layout of a cache folder::

    <cache_dir>/spec.json                        # what is being encoded (written first)
    <cache_dir>/<part>/shard-00000.safetensors   # tensor "emb" (rows, dim), fp16 or fp32
    <cache_dir>/<part>/shard-00000.safetensors.sha256   # its digest, written right after it
    <cache_dir>/<part>/ids.json                  # the part's ids, in item order
    <cache_dir>/manifest.json                    # written last: the cache is complete
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import SmecError
from ..io import json_bytes

FORMAT = 2  # 2: content-addressed (model identity, model dtype, every text); 1 keyed on ids and names only
MANIFEST = "manifest.json"
SPEC = "spec.json"
IDS = "ids.json"
TENSOR = "emb"

DTYPES = {"float16": np.float16, "float32": np.float32}
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "f16": "float16",
                  "fp32": "float32", "float": "float32", "f32": "float32"}
SAFETENSORS_DTYPES = {"float16": "F16", "float32": "F32"}
PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Keys of spec.json that identify the embeddings: what the model is (its identity, not its
# name: smec_dist.backbone.model_identity), how it runs, and every id and text of every part.
# "model" (the name as given) and "dataset" (the folder) are stored for the record but not
# compared: the same model or dataset reached through another name or path yields the same cache.
SPEC_KEYS = ("format", "model_id", "model_dtype", "pooling", "normalize", "max_length", "append_eos", "dim",
              "dtype", "shard_size", "parts")
UNCOMPARED_SPEC_KEYS = ("model", "dataset")
# how the embeddings are laid out, not what they are: a complete cache is reused whatever its
# shard size, but an unfinished one is only finished with the shard size it was started with
LAYOUT_KEYS = ("shard_size",)
PART_KEYS = ("count", "ids_sha256", "texts_sha256")


def ids_sha256(ids: Sequence[str]) -> str:
    """Returns the sha256 hex digest of ``"\\n".join(ids)``."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def texts_sha256(ids: Sequence[str], texts: Sequence[str]) -> str:
    """The sha256 of every (id, text) pair in order, each JSON-encoded on its own line (a text
    may hold newlines; the encoding keeps every pair apart)."""
    digest = hashlib.sha256()
    for i, t in zip(ids, texts):
        digest.update(json.dumps([i, t], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def spec_key(spec: Mapping) -> str:
    """A hex digest of the embeddings a spec identifies (its compared keys but the layout): the
    cache's address."""
    content = {k: spec.get(k) for k in SPEC_KEYS if k not in LAYOUT_KEYS}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def shard_name(index: int) -> str:
    """Returns the file name of shard ``index`` (``shard-00000.safetensors``)."""
    return f"shard-{index:05d}.safetensors"


def num_shards(count: int, shard_size: int) -> int:
    """Returns how many shards hold ``count`` items (0 for an empty part)."""
    return math.ceil(count / shard_size)


def normalize_dtype(dtype: str) -> str:
    name = DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise SmecError(f"cache dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    return name


def spec_bytes(obj: Any) -> bytes:
    # sort_keys: every rank must produce byte-identical spec.json content (see build_cache)
    return json_bytes(obj, indent=2, sort_keys=True)


def read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SmecError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SmecError(f"{path}: line {exc.lineno}: malformed {what} JSON: {exc.msg}") from exc


def read_safetensors_header(path: Path) -> dict:
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


def check_shard_header(path: Path, rows: int, dim: int, dtype: str, hint: str) -> None:
    """Raises :class:`SmecError` unless the shard holds ``emb`` of shape (rows, dim) in dtype."""
    entry = read_safetensors_header(path)
    shape = [int(x) for x in entry["shape"]]
    if len(shape) != 2 or shape[1] != dim:
        raise SmecError(f"{path}: shard has shape {shape} but the cache dim is {dim}; {hint}")
    if shape[0] != rows:
        raise SmecError(f"{path}: shard has {shape[0]} rows, expected {rows}; {hint}")
    if entry.get("dtype") != SAFETENSORS_DTYPES[dtype]:
        raise SmecError(f"{path}: shard dtype {entry.get('dtype')} differs from the cache dtype {dtype}; {hint}")
