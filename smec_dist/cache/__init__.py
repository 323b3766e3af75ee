"""The on-disk embedding cache: frozen-backbone embeddings of a corpus and its queries.

Layout of a cache folder::

    <cache_dir>/spec.json                        # what is being encoded (written first)
    <cache_dir>/<part>/shard-00000.safetensors   # tensor "emb" (rows, dim), fp16 or fp32
    <cache_dir>/<part>/ids.json                  # the part's ids, in item order
    <cache_dir>/manifest.json                    # written last: the cache is complete

Shard ``i`` of a part always covers items ``[i * shard_size, (i + 1) * shard_size)``, so a
shard is identified by its index alone; it is "done" when its file exists and matches the
sha256 record written right after it (every file is written to a temporary name and renamed
into place, and a rename is atomic). This is what makes encoding resumable (a re-run encodes
only the shards that are missing or altered) and splittable across ranks (rank ``r`` encodes
the shards ``i`` with ``i % world_size == r``).

``manifest.json`` is written by rank 0 only after every shard exists, and carries each
shard's sha256; a folder without it is an unfinished cache and :func:`load_cache` refuses
it. ``spec.json`` pins what the embeddings are (the model's identity and dtype, pooling,
max_length, every id and text of each part) and the shard size, so a re-run with different
settings in the same folder fails instead of mixing embeddings.

The package: :mod:`.format` (names and digests on disk), :mod:`.spec` (what a cache holds),
:mod:`.build` (encoding, resumption, sealing), :mod:`.load` (reading and verifying).
"""

from ..io import file_sha256
from .build import build_cache
from .format import (DTYPES, FORMAT, IDS, MANIFEST, SPEC, TENSOR, ids_sha256, num_shards, shard_name, spec_key,
                     texts_sha256)
from .load import EmbeddingCache, is_complete, load_cache
from .spec import cache_spec, check_complete_cache, spec_differences

__all__ = ["DTYPES", "FORMAT", "IDS", "MANIFEST", "SPEC", "TENSOR", "EmbeddingCache", "build_cache", "cache_spec",
           "check_complete_cache", "file_sha256", "ids_sha256", "is_complete", "load_cache", "num_shards",
           "shard_name", "spec_differences", "spec_key", "texts_sha256"]
