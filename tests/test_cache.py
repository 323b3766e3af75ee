"""Tests of the on-disk embedding cache (smec_dist.cache), on CPU with a tiny random BERT."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from smec_dist.backbone import Encoder, resolve_model
from smec_dist.cache import (
    MANIFEST,
    SPEC,
    build_cache,
    cache_spec,
    file_sha256,
    ids_sha256,
    is_complete,
    load_cache,
    shard_name,
    texts_sha256,
)
from smec_dist.errors import SmecError

WORDS = "alpha beta gamma delta protein cell gene tumour vaccine dose trial mouse".split()


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """A 2-layer, 32-dim random BERT with the real MiniLM tokenizer (fast, deterministic)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, vocab_size=tok.vocab_size)
    model = BertModel(cfg).eval()
    return Encoder(model, tok, pooling="mean", normalize=True, max_length=64)


def make_items(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n ids and texts of varied lengths in no particular length order."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 25)))) + f" {k}" for k in range(n)]
    return [f"d{k}" for k in range(n)], texts


class Counting:
    """Wraps an encoder, counting encode calls and texts; optionally fails on call ``fail_on``."""

    def __init__(self, inner: Encoder, fail_on: int | None = None):
        self.inner, self.fail_on = inner, fail_on
        self.calls: list[list[str]] = []

    def __getattr__(self, name):  # dim, pooling, normalize, ... come from the real encoder
        return getattr(self.inner, name)

    def encode(self, texts, batch_size=64, progress=True, desc="encode"):
        self.calls.append(list(texts))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("simulated crash")
        return self.inner.encode(texts, batch_size=batch_size, progress=progress, desc=desc)


def build(path: Path, enc, parts, **kw) -> Path | None:
    kw.setdefault("progress", False)
    return build_cache(path, enc, "tiny-bert", parts, **kw)


def shard_files(root: Path, part: str = "corpus") -> list[Path]:
    return sorted((root / part).glob("shard-*.safetensors"))


# --------------------------------------------------------------------------- round trip


def test_round_trip_fp32_exact_and_layout(tmp_path, encoder):
    ids, texts = make_items(20)
    qids, qtexts = make_items(5, seed=1)
    qids = [f"q{k}" for k in range(5)]
    manifest_path = build(tmp_path / "c", encoder, {"corpus": (ids, texts), "queries": (qids, qtexts)},
                          dtype="float32", shard_size=64, batch_size=8)
    assert manifest_path == tmp_path / "c" / MANIFEST
    cache = load_cache(tmp_path / "c")
    # one shard, same batch size: the very batches encode() makes, so bit-identical
    np.testing.assert_array_equal(cache.embeddings("corpus"), encoder.encode(texts, batch_size=8, progress=False))
    np.testing.assert_array_equal(cache.embeddings("queries"), encoder.encode(qtexts, batch_size=8, progress=False))
    assert cache.ids("corpus") == ids and cache.ids("queries") == qids
    assert cache.dim == 32 and cache.count("corpus") == 20 and set(cache.parts) == {"corpus", "queries"}

    m = json.loads(manifest_path.read_text())
    assert m["format"] == 2 and m["model"] == "tiny-bert" and m["pooling"] == "mean"
    assert m["model_id"] == {"name": "tiny-bert"} and m["model_dtype"] == "float32"  # no identity given: the name
    assert m["normalize"] is True and m["max_length"] == 64 and m["append_eos"] is False
    assert m["dim"] == 32 and m["dtype"] == "float32" and m["shard_size"] == 64 and "created" in m
    part = m["parts"]["corpus"]
    assert part["count"] == 20 and part["ids_sha256"] == ids_sha256(ids)
    assert part["texts_sha256"] == texts_sha256(ids, texts)
    assert part["shards"] == [{"file": "corpus/shard-00000.safetensors", "rows": 20,
                               "sha256": file_sha256(tmp_path / "c" / "corpus" / shard_name(0))}]
    assert json.loads((tmp_path / "c" / "corpus" / "ids.json").read_text()) == ids
    assert (tmp_path / "c" / SPEC).exists() and is_complete(tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.tmp"))
    assert (tmp_path / "c" / "corpus" / (shard_name(0) + ".sha256")).read_text() == part["shards"][0]["sha256"]


def test_fp16_close_and_about_half_the_size(tmp_path, encoder):
    ids, texts = make_items(50)
    build(tmp_path / "f32", encoder, {"corpus": (ids, texts)}, dtype="float32", shard_size=16)
    build(tmp_path / "f16", encoder, {"corpus": (ids, texts)}, dtype="float16", shard_size=16)
    e32 = load_cache(tmp_path / "f32").embeddings("corpus")
    c16 = load_cache(tmp_path / "f16")
    e16 = c16.embeddings("corpus")
    assert e16.dtype == np.float32 and c16.embeddings("corpus", dtype=np.float16).dtype == np.float16
    np.testing.assert_allclose(e16, e32, atol=1e-3)
    size = lambda root: sum(p.stat().st_size for p in shard_files(root))  # noqa: E731
    assert 0.45 < size(tmp_path / "f16") / size(tmp_path / "f32") < 0.56


def test_item_order_preserved_across_shards(tmp_path, encoder):
    # lengths deliberately unsorted (long, short, long, ...): encode() sorts by length inside
    texts = [("gene " * 30 if k % 2 == 0 else "cell") + f" {k}" for k in range(13)]
    ids = [f"x{k}" for k in reversed(range(13))]
    build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, dtype="float32", shard_size=4, batch_size=3)
    cache = load_cache(tmp_path / "c")
    emb = cache.embeddings("corpus")
    assert emb.shape == (13, 32) and len(shard_files(tmp_path / "c")) == 4
    alone = np.stack([encoder.encode([t], progress=False)[0] for t in texts])  # (13, 32)
    np.testing.assert_allclose(emb, alone, atol=1e-5)  # padding changes fp rounding only
    assert cache.ids("corpus") == ids
    # each row is nearest its own text: a permutation would show here
    assert (np.argmax(emb @ alone.T, axis=1) == np.arange(13)).all()


# --------------------------------------------------------------------------- resume, ranks


def test_resume_reencodes_only_the_missing_shard(tmp_path, encoder, caplog):
    ids, texts = make_items(23)
    root = tmp_path / "c"
    first = Counting(encoder)
    build(root, first, {"corpus": (ids, texts)}, dtype="float32", shard_size=5)
    assert len(first.calls) == 5  # 5 + 5 + 5 + 5 + 3
    before = load_cache(root).embeddings("corpus")
    sums = {p.name: file_sha256(p) for p in shard_files(root)}

    # a kill between shard 2 and the manifest: the shard and the manifest are gone
    (root / "corpus" / shard_name(2)).unlink()
    (root / MANIFEST).unlink()
    (root / "corpus" / (shard_name(2) + ".tmp")).write_bytes(b"half-written")  # must be ignored
    assert not is_complete(root)

    again = Counting(encoder)
    with caplog.at_level(logging.INFO, logger="smec_dist.cache"):
        build(root, again, {"corpus": (ids, texts)}, dtype="float32", shard_size=5)
    assert again.calls == [texts[10:15]]
    assert "4 of its 5 shards already done, encoding 1" in caplog.text
    np.testing.assert_array_equal(load_cache(root).embeddings("corpus"), before)
    assert {p.name: file_sha256(p) for p in shard_files(root)} == sums
    assert not list(root.rglob("*.tmp"))


def test_rebuild_of_complete_cache_encodes_nothing(tmp_path, encoder):
    ids, texts = make_items(8)
    build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, shard_size=3)
    again = Counting(encoder)
    assert build(tmp_path / "c", again, {"corpus": (ids, texts)}, shard_size=3) == tmp_path / "c" / MANIFEST
    assert again.calls == []


def test_two_fake_ranks_equal_one_process(tmp_path, encoder):
    ids, texts = make_items(17)
    qids, qtexts = [f"q{k}" for k in range(6)], make_items(6, seed=3)[1]
    parts = {"corpus": (ids, texts), "queries": (qids, qtexts)}
    build(tmp_path / "one", encoder, parts, shard_size=4)

    barriers = []
    r1, r0 = Counting(encoder), Counting(encoder)
    # rank 1 first: it must not need anything rank 0 writes
    assert build(tmp_path / "two", r1, parts, shard_size=4, rank=1, world_size=2,
                 barrier=lambda: barriers.append(1)) is None
    assert not (tmp_path / "two" / MANIFEST).exists()
    assert build(tmp_path / "two", r0, parts, shard_size=4, rank=0, world_size=2,
                 barrier=lambda: barriers.append(0)) == tmp_path / "two" / MANIFEST
    assert barriers == [1, 0]
    # corpus shards 0..4 and query shards 0..1, split by index parity
    assert r1.calls == [texts[4:8], texts[12:16], qtexts[4:6]]
    assert r0.calls == [texts[0:4], texts[8:12], texts[16:17], qtexts[0:4]]

    one, two = load_cache(tmp_path / "one"), load_cache(tmp_path / "two")
    for part in ("corpus", "queries"):
        np.testing.assert_array_equal(one.embeddings(part), two.embeddings(part))
        assert one.ids(part) == two.ids(part)
        assert one.manifest["parts"][part] == two.manifest["parts"][part]  # same shard checksums


# --------------------------------------------------------------------------- refusals


def test_spec_mismatch_names_key_and_both_values(tmp_path, encoder):
    ids, texts = make_items(6)
    build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, dtype="float16", shard_size=4)
    with pytest.raises(SmecError, match=r"spec\.json.*dtype=\"float16\".*dtype=\"float32\".*delete"):
        build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, dtype="float32", shard_size=4)
    with pytest.raises(SmecError, match=r"shard_size=4 .*shard_size=3"):
        build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, dtype="float16", shard_size=3)
    with pytest.raises(SmecError, match=r"parts\.corpus\.count=6 .*parts\.corpus\.count=5"):
        build(tmp_path / "c", encoder, {"corpus": (ids[:5], texts[:5])}, dtype="float16", shard_size=4)
    with pytest.raises(SmecError, match=r"model_id=\{\"name\": \"tiny-bert\"\} .*model_id=\{\"name\": \"other\"\}"):
        build_cache(tmp_path / "c", encoder, "other", {"corpus": (ids, texts)}, shard_size=4, progress=False)
    # the same ids with other texts: another cache, never this one
    with pytest.raises(SmecError, match=r"parts\.corpus\.texts_sha256"):
        build(tmp_path / "c", encoder, {"corpus": (ids, [t + " (edited)" for t in texts])}, dtype="float16",
              shard_size=4)


def test_model_identity_not_name_keys_the_cache(tmp_path, encoder):
    """Two names of the same model (an alias and its folder) share a cache; another model's
    weights under the same name do not."""
    ids, texts = make_items(6)
    same = {"sha256": "a" * 64}
    build_cache(tmp_path / "c", encoder, "minilm", {"corpus": (ids, texts)}, shard_size=4, progress=False,
                model_id=same)
    build_cache(tmp_path / "c", encoder, "/models/all-MiniLM-L6-v2", {"corpus": (ids, texts)}, shard_size=4,
                progress=False, model_id=same)  # reused: nothing to encode
    with pytest.raises(SmecError, match=r"model_id="):
        build_cache(tmp_path / "c", encoder, "minilm", {"corpus": (ids, texts)}, shard_size=4, progress=False,
                    model_id={"sha256": "b" * 64})
    with pytest.raises(SmecError, match=r"model_dtype=\"float32\" .*model_dtype=\"bfloat16\""):
        build_cache(tmp_path / "c", encoder, "minilm", {"corpus": (ids, texts)}, shard_size=4, progress=False,
                    model_id=same, model_dtype="bfloat16")


def test_a_shard_left_by_a_killed_run_is_trusted_only_against_its_record(tmp_path, encoder):
    """Resuming an unsealed cache: a shard whose bytes do not match the checksum recorded after it
    (corrupted, or written without a record) is encoded again; matching ones are kept."""
    ids, texts = make_items(9)
    root = tmp_path / "c"
    with pytest.raises(RuntimeError):
        build(root, Counting(encoder, fail_on=3), {"corpus": (ids, texts)}, shard_size=3, dtype="float32")  # 0, 1 written
    shard0 = root / "corpus" / shard_name(0)
    data = bytearray(shard0.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte off: the header check alone would pass it
    shard0.write_bytes(bytes(data))
    again = Counting(encoder)
    build(root, again, {"corpus": (ids, texts)}, shard_size=3, dtype="float32")
    assert again.calls == [texts[0:3], texts[6:9]]  # shard 0 redone, shard 1 kept, shard 2 new
    cache = load_cache(root)  # verifies every sha256
    np.testing.assert_array_equal(cache.embeddings("corpus")[:3], encoder.encode(texts[:3], progress=False))


def test_spec_mismatch_on_resume_of_unfinished_cache(tmp_path, encoder):
    ids, texts = make_items(9)
    with pytest.raises(RuntimeError):
        build(tmp_path / "c", Counting(encoder, fail_on=2), {"corpus": (ids, texts)}, shard_size=3)
    other = [f"z{k}" for k in range(9)]  # same count, other ids: must not reuse shard 0
    with pytest.raises(SmecError, match=r"parts\.corpus\.ids_sha256"):
        build(tmp_path / "c", encoder, {"corpus": (other, texts)}, shard_size=3)


def test_shards_without_spec_are_refused(tmp_path, encoder):
    ids, texts = make_items(6)
    build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, shard_size=3)
    (tmp_path / "c" / SPEC).unlink()
    with pytest.raises(SmecError, match="unknown spec"):
        build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, shard_size=3)


def test_crash_leaves_no_manifest_and_load_errors(tmp_path, encoder):
    ids, texts = make_items(12)
    crashing = Counting(encoder, fail_on=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(tmp_path / "c", crashing, {"corpus": (ids, texts)}, shard_size=4)
    root = tmp_path / "c"
    assert not (root / MANIFEST).exists() and not is_complete(root)
    assert [p.name for p in shard_files(root)] == [shard_name(0), shard_name(1)]
    with pytest.raises(SmecError, match=r"manifest\.json: missing, so the cache is incomplete.*smec encode"):
        load_cache(root)
    resumed = Counting(encoder)
    build(root, resumed, {"corpus": (ids, texts)}, shard_size=4)
    assert resumed.calls == [texts[8:12]] and is_complete(root)


def test_corrupted_shard_detected_by_checksum(tmp_path, encoder):
    ids, texts = make_items(10)
    build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, shard_size=4)
    shard = tmp_path / "c" / "corpus" / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last embedding value; header and size stay valid
    shard.write_bytes(bytes(data))
    with pytest.raises(SmecError, match=r"shard-00001\.safetensors: sha256 differs"):
        load_cache(tmp_path / "c")
    load_cache(tmp_path / "c", verify=False)  # no hashing: only structure is checked
    assert is_complete(tmp_path / "c")


def test_load_errors_name_the_file(tmp_path, encoder):
    with pytest.raises(SmecError, match="no embedding cache here"):
        load_cache(tmp_path / "nowhere")
    ids, texts = make_items(10)
    root = tmp_path / "c"
    build(root, encoder, {"corpus": (ids, texts)}, shard_size=4)
    good = (root / MANIFEST).read_text()

    (root / MANIFEST).write_text(good[:-20])
    with pytest.raises(SmecError, match=r"manifest\.json: line \d+: malformed manifest JSON"):
        load_cache(root)

    m = json.loads(good)
    m["parts"]["corpus"]["shards"][0]["rows"] = 3
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SmecError, match=r"manifest\.json: malformed manifest: parts\.corpus: shard rows add up to 9 but count is 10"):
        load_cache(root)

    m = json.loads(good)
    m["dim"] = 64
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SmecError, match=r"shard-00000\.safetensors: shard has shape \[4, 32\] but the cache dim is 64"):
        load_cache(root)

    (root / MANIFEST).write_text(good)
    (root / "corpus" / shard_name(2)).unlink()
    with pytest.raises(SmecError, match=r"shard-00002\.safetensors: shard listed in the manifest is missing"):
        load_cache(root)
    assert not is_complete(root)


def test_unknown_part_and_damaged_ids(tmp_path, encoder):
    ids, texts = make_items(5)
    build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, shard_size=4)
    cache = load_cache(tmp_path / "c")
    with pytest.raises(SmecError, match=r"manifest\.json: no part 'queries' in the cache \(has: corpus\)"):
        cache.embeddings("queries")
    (tmp_path / "c" / "corpus" / "ids.json").write_text(json.dumps(ids[::-1]))
    with pytest.raises(SmecError, match=r"ids\.json: ids do not match the manifest"):
        cache.ids("corpus")


def test_bad_inputs(tmp_path, encoder):
    ids, texts = make_items(4)
    with pytest.raises(SmecError, match="4 ids but 3 texts"):
        build(tmp_path / "a", encoder, {"corpus": (ids, texts[:3])})
    with pytest.raises(SmecError, match="id 'd1' occurs more than once"):
        build(tmp_path / "b", encoder, {"corpus": (ids + ["d1"], texts + ["x"])})
    with pytest.raises(SmecError, match="dtype 'int8'"):
        build(tmp_path / "c", encoder, {"corpus": (ids, texts)}, dtype="int8")
    with pytest.raises(SmecError, match="rank must be in"):
        build(tmp_path / "d", encoder, {"corpus": (ids, texts)}, rank=2, world_size=2)
    assert cache_spec(encoder, "m", "", "fp16", 8, {"corpus": (ids, ids)})["dtype"] == "float16"


def test_real_scifact_subset(tmp_path, encoder, data_dir):
    from smec_dist.data.beir import load_beir

    ds = load_beir(data_dir / "scifact")
    ids, texts = ds.doc_ids()[:12], ds.doc_texts()[:12]
    qids = list(ds.queries)[:6]
    build(tmp_path / "c", encoder, {"corpus": (ids, texts), "queries": (qids, [ds.queries[q] for q in qids])},
          dataset_path=str(data_dir / "scifact"), shard_size=5)
    cache = load_cache(tmp_path / "c")
    assert cache.manifest["dataset"] == str((data_dir / "scifact").resolve())
    assert cache.ids("corpus") == ids and cache.embeddings("queries").shape == (6, 32)
