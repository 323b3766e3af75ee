"""AdapterCache (LRU of per-domain LoRA adapters), adapter training and the domain-shift run.

A tiny random decoder (``tiny-qwen2``, 2 layers, width 64) keeps every test to seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from smec_dist.train.adapters import AdapterCache, check_adapter_folder, train_adapter
from smec_dist.backbone import Encoder, load_trainable, resolve_model
from smec_dist.errors import SmecError
from test_cli import assert_one_error_line, invoke
from mini_beir import make_mini_beir

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the protein binds the receptor", "a plane is taking off", "boundary layer flow over a wing",
         "two men play chess"]
PAIRS = [("what binds the receptor", "the protein binds the receptor"),
         ("aircraft departure", "a plane is taking off"),
         ("flow near a wing surface", "boundary layer flow over a wing"),
         ("a board game", "two men play chess"),
         ("gene expression in cells", "cells express the gene"),
         ("heat transfer at high speed", "hypersonic heating of a cone")]


@pytest.fixture(autouse=True)
def _cache(monkeypatch):
    monkeypatch.setenv("SMEC_CACHE", os.environ.get("SMEC_CACHE", str(ROOT / ".cache")))


@pytest.fixture
def lora():
    net, tok, pooling, eos = load_trainable("tiny-qwen2", "lora", lora_r=4, lora_alpha=8)
    return net, tok, Encoder(net, tok, pooling=pooling, append_eos=eos, max_length=32)


class Warmup:
    """Trains a new adapter for a few steps; counts its calls per domain."""

    def __init__(self, tok):
        self.tok, self.calls = tok, {}

    def __call__(self, model, domain, steps):
        self.calls[domain] = self.calls.get(domain, 0) + 1
        seed = sum(map(ord, domain))  # each domain a different adapter
        train_adapter(model, self.tok, PAIRS, steps, 5e-2, 4, pooling="last", append_eos=True, max_length=32,
                      seed=seed, progress=False)


def embed(encoder: Encoder) -> np.ndarray:
    return encoder.encode(TEXTS, progress=False)


def test_lru_events_stats_and_slots(lora, tmp_path):
    net, tok, _ = lora
    warmup = Warmup(tok)
    cache = AdapterCache(net, 2, tmp_path / "store", warmup=warmup, warmup_steps=2)
    for domain in ["alpha", "beta", "alpha", "gamma", "beta", "alpha"]:
        cache.get(domain)
        assert net.active_adapter == cache.adapter_name(domain)
        assert len(net.peft_config) <= 2
    assert cache.events == [("alpha", "miss", None), ("beta", "miss", None), ("alpha", "hit", None),
                            ("gamma", "miss", "beta"), ("beta", "miss", "alpha"), ("alpha", "miss", "gamma")]
    assert [e.source for e in cache.records] == ["new", "new", "cache", "new", "disk", "disk"]
    assert warmup.calls == {"alpha": 1, "beta": 1, "gamma": 1}  # reloaded from disk, never retrained
    assert cache.loaded == ["beta", "alpha"] and cache.active == "alpha"
    assert sorted(net.peft_config) == ["domain_alpha", "domain_beta"]  # the template adapter is gone
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["capacity"]) == (1, 5, 3, 2)
    assert s["hit_rate"] == pytest.approx(1 / 6)
    assert s["miss_ms"]["n"] == 5 and 0 < s["miss_ms"]["p50"] <= s["miss_ms"]["max"] and s["miss_ms"]["mean"] > 0
    assert s["load_ms"]["n"] == 2 and s["load_ms"]["mean"] > 0 and s["create_ms"]["n"] == 3
    sizes = s["adapter_bytes"]["alpha"]
    assert sizes["param_bytes"] == 4 * sizes["params"] > 0 and sizes["disk_bytes"] >= sizes["param_bytes"]
    assert s["kb_per_adapter"] == pytest.approx(sizes["param_bytes"] / 1024)
    assert "| hit rate | 16.7% |" in cache.report_md()
    json.dumps(s)  # JSON-ready


def test_reloaded_adapter_gives_bit_identical_embeddings(lora, tmp_path):
    net, tok, enc = lora
    cache = AdapterCache(net, 1, tmp_path / "store", warmup=Warmup(tok), warmup_steps=3)
    cache.get("alpha")
    before = embed(enc)
    cache.get("beta")  # K=1: alpha is evicted, beta becomes the only adapter
    assert cache.events[-1] == ("beta", "miss", "alpha") and list(net.peft_config) == ["domain_beta"]
    assert not np.allclose(embed(enc), before)
    cache.get("alpha")
    assert cache.records[-1].source == "disk"
    assert np.array_equal(embed(enc), before)


def test_state_dict_restores_the_lru_set_on_a_fresh_model(lora, tmp_path):
    net, tok, enc = lora
    cache = AdapterCache(net, 2, tmp_path / "store", warmup=Warmup(tok), warmup_steps=2)
    for domain in ["alpha", "beta", "gamma", "beta"]:
        cache.get(domain)
    before, state = embed(enc), json.loads(json.dumps(cache.state_dict()))
    net2, tok2, _, _ = load_trainable("tiny-qwen2", "lora", lora_r=4, lora_alpha=8)
    restored = AdapterCache(net2, 2, tmp_path / "store")
    restored.load_state_dict(state)
    assert restored.loaded == ["gamma", "beta"] and restored.events == cache.events
    assert restored.stats() == cache.stats()
    np.testing.assert_array_equal(Encoder(net2, tok2, pooling="last", append_eos=True, max_length=32)
                                  .encode(TEXTS, progress=False), before)


def test_train_adapter_moves_only_the_active_adapter(lora, tmp_path):
    net, tok, _ = lora
    cache = AdapterCache(net, 2, tmp_path / "store")
    cache.get("alpha")
    cache.get("beta")
    snapshot = {n: p.detach().clone() for n, p in net.named_parameters()}
    result = train_adapter(net, tok, PAIRS, 3, 1e-2, 4, pooling="last", append_eos=True, max_length=32,
                           progress=False)
    assert result["steps"] == 3 and np.isfinite(result["losses"]).all()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, snapshot[n])}
    assert changed and all(".domain_beta." in n for n in changed)
    assert not any(p.requires_grad for p in net.parameters())  # frozen again, as load_adapter left them


def test_new_domain_with_warmup_is_a_peft_folder(lora, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    net, tok, enc = lora
    base = embed(enc)  # the template adapter has B = 0: the base model
    cache = AdapterCache(net, 2, tmp_path / "store", warmup=Warmup(tok), warmup_steps=3)
    cache.get("alpha")
    tuned = embed(enc)
    assert np.abs(tuned - base).max() > 1e-4
    folder = tmp_path / "store" / "alpha"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(resolve_model("tiny-qwen2")), str(folder))
    again = Encoder(plain, tok, pooling="last", append_eos=True, max_length=32).encode(TEXTS, progress=False)
    np.testing.assert_allclose(again, tuned, atol=1e-6)


def test_invalid_input_is_a_one_line_error(lora, tmp_path):
    net, tok, _ = lora
    for bad in (0, -1, True, 1.5):
        with pytest.raises(SmecError, match="capacity must be an integer >= 1"):
            AdapterCache(net, bad, tmp_path / "store")
    with pytest.raises(SmecError, match="warmup_steps must be 1-10"):
        AdapterCache(net, 2, tmp_path / "store", warmup=Warmup(tok), warmup_steps=11)
    with pytest.raises(SmecError, match="needs a PEFT model"):
        AdapterCache(torch.nn.Linear(2, 2), 2, tmp_path / "store")

    cache = AdapterCache(net, 1, tmp_path / "store")
    with pytest.raises(SmecError, match="adapter domain 'a/b'"):
        cache.get("a/b")
    strict = AdapterCache(net, 1, tmp_path / "other", create=False)
    with pytest.raises(SmecError, match=r"no adapter at .*other/alpha and creating new ones is off"):
        strict.get("alpha")

    cache.get("alpha")
    cache.get("beta")  # evicts alpha, whose folder is damaged next
    weights = tmp_path / "store" / "alpha" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SmecError) as err:
        cache.get("alpha")
    assert str(weights) in str(err.value) and "\n" not in str(err.value)
    assert cache.loaded == ["beta"] and net.active_adapter == "domain_beta"  # nothing was evicted for it

    # a folder written by another tool (no manifest): its own header check, then PEFT's
    (tmp_path / "store" / "alpha" / "manifest.json").unlink()
    with pytest.raises(SmecError, match=f"{weights}: not a readable safetensors file"):
        cache.get("alpha")
    config = tmp_path / "store" / "beta" / "adapter_config.json"
    config.write_text("{not json")
    with pytest.raises(SmecError, match=f"{config}: not a readable adapter config"):
        check_adapter_folder(config.parent)
    assert cache.loaded == ["beta"]


def test_cli_errors_are_one_line(tmp_path):
    rc, out, err = invoke(["adapters", "--output", str(tmp_path / "o"), "--capacity", "0"])
    assert_one_error_line(rc, out, err, "--capacity must be an integer >= 1")
    rc, out, err = invoke(["adapters", "--output", str(tmp_path / "o"), "--sequence", "A,B,Z"])
    assert_one_error_line(rc, out, err, "'Z' is neither a letter")
    rc, out, err = invoke(["adapters", "--output", str(tmp_path / "o"), "--data-dir", str(tmp_path / "none")])
    assert_one_error_line(rc, out, err, str(tmp_path / "none" / "scifact"))


def _mini_data(root: Path) -> Path:
    scifact = Path(os.environ.get("SMEC_DATA_DIR", ROOT.parent / "shared" / "data"))
    make_mini_beir(scifact / "scifact", root / "scifact", n_queries=8, n_extra_docs=8, max_chars=120)
    make_mini_beir(scifact / "scifact", root / "cranfield", n_queries=8, n_extra_docs=8, max_chars=120)
    (root / "stsb").mkdir()
    for split, n in (("train", 60), ("test", 20)):
        lines = (scifact / "stsb" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (root / "stsb" / f"{split}.tsv").write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
    return root


def test_domain_shift_run_end_to_end(tmp_path):
    from smec_dist.recipes.domain_shift import run_domain_shift

    out = tmp_path / "out"
    r = run_domain_shift(sequence="A,B,C,A", capacity=2, steps=2, batch_size=4, out_dir=out,
                         data_dir=_mini_data(tmp_path / "data"), model="tiny-qwen2", lora_r=2, scifact_docs=4,
                         train_max_length=32, eval_max_length=32, progress=False)
    assert [(v["domain"], v["event"], v["evicted"]) for v in r["visits"]] == [
        ("scifact", "miss", None), ("cranfield", "miss", None), ("stsb", "miss", "scifact"),
        ("scifact", "miss", "cranfield")]
    assert r["visits"][-1]["source"] == "disk"
    assert r["summary"]["retention_cache"] == {"scifact": 1.0}  # the reloaded adapter is the trained one
    assert 0 < r["summary"]["retention_shared"]["scifact"]
    assert 0 < r["summary"]["request_hit_rate"] < 1 and r["summary"]["load_ms_mean"] > 0
    assert json.loads((out / "results.json").read_text())["summary"] == r["summary"]
    report = (out / "report.md").read_text()
    assert "retention of scifact, AdapterCache | 1.0000" in report
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["cranfield", "scifact", "stsb"]
    assert not list(out.glob("*.tmp"))
