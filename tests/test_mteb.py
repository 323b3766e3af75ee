"""MTEB through our wrapper scores what our own evaluator scores (real MiniLM, real SciFact)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.mini_beir import mini_data_dir
from smec_dist.backbone import load_encoder
from smec_dist.data.beir import load_beir
from smec_dist.errors import SmecError
from smec_dist.evaluation import evaluate_run, search_run
from smec_dist.evaluation.mteb_eval import local_retrieval_task, run_mteb

ROOT = Path(__file__).resolve().parents[1]

# MTEB rounds nDCG/MAP/Recall/P means to 5 decimals (mteb/_evaluators/retrieval_metrics.py),
# so "equal" means equal up to that rounding.
MTEB_ROUNDING = 5e-6 + 1e-12


class KindModel:
    """The SMEC model protocol, ``encode(texts, kind, dim)``, over the real MiniLM encoder.

    ``dim`` truncates and re-normalises (a Matryoshka-style cut); every call is recorded, so
    tests can check what MTEB asked for and compare the exact embeddings it was given.
    """

    name = "minilm-test"
    revision = "t0"

    def __init__(self, encoder, memo: bool = False):
        self.encoder = encoder
        self.dim = encoder.dim
        self.calls: list[dict] = []
        self.memo: dict[tuple[str, str], np.ndarray] | None = {} if memo else None

    def encode(self, texts, kind, dim=None):
        assert kind in ("query", "doc")
        emb = self.encoder.encode(list(texts), batch_size=64, progress=False)
        if dim is not None:
            emb = emb[:, :dim]
            emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        self.calls.append({"kind": kind, "dim": dim, "texts": list(texts), "emb": emb})
        if self.memo is not None:
            self.memo.update({(kind, t): e for t, e in zip(texts, emb)})
        return emb


def _ours(ds, split, doc_emb, query_emb_of):
    """Our evaluator exactly as smec_dist.recipes.evaluate.evaluate_model runs it (qids sorted, k=100)."""
    qrels = {q: d for q, d in ds.qrels[split].items() if q in ds.queries}
    qids = sorted(qrels)
    return evaluate_run(qrels, search_run(doc_emb, ds.doc_ids(), query_emb_of(qids), qids, k=100)), qids


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm")


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory) -> Path:
    return mini_data_dir(tmp_path_factory)


def test_full_width_matches_our_evaluator_and_writes_mteb_files(minilm, mini_dir, tmp_path):
    model = KindModel(minilm)
    out = tmp_path / "mteb"
    res = run_mteb(model, ["mini"], mini_dir, out)["mini"]

    ds = load_beir(mini_dir / "mini", ["test"])
    doc_emb = minilm.encode(ds.doc_texts(), batch_size=64, progress=False)
    ours, qids = _ours(ds, "test", doc_emb,
                       lambda ids: minilm.encode([ds.queries[q] for q in ids], batch_size=64, progress=False))

    # MTEB was handed exactly our texts, in our order, and got bit-identical embeddings.
    by_kind = {c["kind"]: c for c in model.calls}
    assert [c["kind"] for c in model.calls] == ["query", "doc"] and all(c["dim"] is None for c in model.calls)
    assert by_kind["doc"]["texts"] == ds.doc_texts()
    assert by_kind["query"]["texts"] == [ds.queries[q] for q in qids]
    np.testing.assert_array_equal(by_kind["doc"]["emb"], doc_emb)

    print(f"\nmini: MTEB nDCG@10 {res['ndcg_at_10']:.6f}, ours {ours['nDCG@10']:.6f}")
    assert res["task"] == "LocalBEIR-mini" and res["split"] == "test"
    assert res["main_score"] == res["ndcg_at_10"]
    assert abs(res["ndcg_at_10"] - ours["nDCG@10"]) <= MTEB_ROUNDING
    assert abs(res["metrics"]["recall_at_100"] - ours["Recall@100"]) <= MTEB_ROUNDING
    assert abs(res["metrics"]["mrr_at_10"] - ours["MRR@10"]) <= 1e-9  # MTEB leaves MRR unrounded

    # MTEB's own result layout: results/<model>/<revision>/<task>.json + model_meta.json.
    result_file = Path(res["result_file"])
    assert result_file == out / "results" / "smec__minilm-test-384" / "t0" / "LocalBEIR-mini.json"
    saved = json.loads(result_file.read_text(encoding="utf-8"))
    assert saved["task_name"] == "LocalBEIR-mini"
    assert saved["scores"]["test"][0]["ndcg_at_10"] == pytest.approx(res["ndcg_at_10"], abs=1e-6)
    meta = json.loads((result_file.parent / "model_meta.json").read_text(encoding="utf-8"))
    assert meta["name"] == "smec/minilm-test-384" and meta["embed_dim"] == 384
    assert meta["similarity_fn_name"] == "dot"

    import mteb  # mteb's own tooling reads the files back

    loaded = mteb.ResultCache(out).load_task_result("LocalBEIR-mini", "smec/minilm-test-384", "t0")
    assert loaded is not None and loaded.get_score() == pytest.approx(res["main_score"], abs=1e-6)


def test_dim_is_forwarded_and_scored_at_that_width(minilm, mini_dir, tmp_path):
    model = KindModel(minilm)
    res = run_mteb(model, ["mini"], mini_dir, tmp_path / "mteb", dim=64)["mini"]

    assert [c["dim"] for c in model.calls] == [64, 64]
    assert all(c["emb"].shape[1] == 64 for c in model.calls)
    ds = load_beir(mini_dir / "mini", ["test"])

    def cut(x):
        x = x[:, :64]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    doc_emb = cut(minilm.encode(ds.doc_texts(), batch_size=64, progress=False))
    ours, _ = _ours(ds, "test", doc_emb,
                    lambda ids: cut(minilm.encode([ds.queries[q] for q in ids], batch_size=64, progress=False)))
    print(f"\nmini dim 64: MTEB nDCG@10 {res['ndcg_at_10']:.6f}, ours {ours['nDCG@10']:.6f}")
    assert abs(res["ndcg_at_10"] - ours["nDCG@10"]) <= MTEB_ROUNDING
    result_file = Path(res["result_file"])
    assert result_file.parts[-3] == "smec__minilm-test-64"
    assert json.loads((result_file.parent / "model_meta.json").read_text())["embed_dim"] == 64


def test_unknown_task_name_is_a_smec_error(minilm, mini_dir, tmp_path):
    with pytest.raises(SmecError, match="no_such_task_xyz") as err:
        run_mteb(KindModel(minilm), ["no_such_task_xyz"], mini_dir, tmp_path / "mteb")
    assert str(mini_dir / "no_such_task_xyz") in str(err.value)
    assert "MTEB task registry" in str(err.value)
    assert not (tmp_path / "mteb").exists()  # nothing ran


def test_missing_qrels_split_names_the_file(minilm, mini_dir, tmp_path):
    expected = str(mini_dir / "mini" / "qrels" / "dev.tsv")
    with pytest.raises(SmecError, match="dev.tsv") as err:
        run_mteb(KindModel(minilm), ["mini"], mini_dir, tmp_path / "mteb", split="dev")
    assert expected in str(err.value)
    with pytest.raises(SmecError, match="dev.tsv"):
        local_retrieval_task(mini_dir / "mini", split="dev")


def test_bad_dim_is_a_smec_error(minilm, mini_dir, tmp_path):
    with pytest.raises(SmecError, match="dim"):
        run_mteb(KindModel(minilm), ["mini"], mini_dir, tmp_path / "mteb", dim=0)


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="checks the offline error only")
def test_registry_task_offline_says_it_needs_the_hub(minilm, mini_dir, tmp_path):
    # "SciFact" is an MTEB task but not a folder in this data dir: its data is on the hub.
    with pytest.raises(SmecError, match="SciFact.*hub"):
        run_mteb(KindModel(minilm), ["SciFact"], mini_dir, tmp_path / "mteb")


def test_importing_evaluation_does_not_import_mteb():
    code = ("import sys, smec_dist.evaluation, smec_dist.evaluation.mteb_eval as m; "
            "assert 'mteb' not in sys.modules, 'mteb imported eagerly'; "
            "m.MTEBEncoder; assert 'mteb' in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


@pytest.mark.slow
@pytest.mark.scifact
def test_full_scifact_matches_our_evaluator(minilm, data_dir, tmp_path):
    """SciFact test split (300 queries, 5,183 docs): several minutes on 2 CPU cores."""
    model = KindModel(minilm, memo=True)
    start = time.perf_counter()
    res = run_mteb(model, ["scifact"], data_dir, tmp_path / "mteb")["scifact"]
    mteb_s = time.perf_counter() - start

    ds = load_beir(data_dir / "scifact", ["test"])
    # Our evaluator reuses the embeddings MTEB's run produced, looked up by text; every text
    # it needs must have been encoded through the wrapper (so the inputs are identical).
    memo = model.memo
    missing = [t for t in ds.doc_texts() if ("doc", t) not in memo]
    assert not missing, f"{len(missing)} doc texts of our evaluator never reached the wrapper"
    doc_emb = np.stack([memo["doc", t] for t in ds.doc_texts()])
    ours, qids = _ours(ds, "test", doc_emb, lambda ids: np.stack([memo["query", ds.queries[q]] for q in ids]))
    assert len(qids) == 300 and len(ds.corpus) == 5183
    print(f"\nSciFact test: MTEB nDCG@10 {res['ndcg_at_10']:.6f}, ours {ours['nDCG@10']:.6f} "
          f"(unrounded {ours['nDCG@10']!r}); MTEB run {mteb_s:.0f} s")
    assert abs(res["ndcg_at_10"] - ours["nDCG@10"]) <= MTEB_ROUNDING
    assert Path(res["result_file"]).is_file()
