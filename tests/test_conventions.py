"""BEIR/MTEB conventions decided from the data: identical query/document ids, and judgments
that name absent ids.

Two toy sets built from SciFact texts: an ArguAna-like one, whose queries are documents of the
corpus under the same id (each judged relevant to another document), and a numeric-id one
(Cranfield-like: query "1" and document "1" exist but are unrelated, and "1" may even be a
real judgment). Under ``auto`` the first drops the identical document everywhere a query meets
the corpus; the second keeps it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from smec_dist.cli import main
from smec_dist.data import identical_ids, load_beir
from smec_dist.errors import SmecError
from smec_dist.evaluation import bm25_run, drop_identical, search_metrics

N_DOCS = 40


def _docs(data_dir: Path) -> list[dict]:
    lines = (data_dir / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:N_DOCS]
    return [json.loads(line) for line in lines]


def _write(root: Path, docs: list[dict], queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()),
                                        encoding="utf-8")
    rows = "".join(f"{q}\t{d}\t{s}\n" for q, judged in qrels.items() for d, s in judged.items())
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def arguana_like(tmp_path_factory, data_dir) -> Path:
    """Documents d0..d39 (SciFact texts); queries d0..d19 are documents 0..19 themselves, and
    query d<i> is judged relevant to document d<i+20> (its counter-argument)."""
    docs = [{"_id": f"d{i}", "title": "", "text": d["text"]} for i, d in enumerate(_docs(data_dir))]
    queries = {f"d{i}": docs[i]["text"] for i in range(20)}
    qrels = {f"d{i}": {f"d{i + 20}": 1} for i in range(20)}
    return _write(tmp_path_factory.mktemp("conv") / "data" / "argu", docs, queries, qrels)


@pytest.fixture(scope="module")
def numeric_ids(tmp_path_factory, data_dir) -> Path:
    """Cranfield-like: documents "1".."40", queries "1".."20" with their own texts (the second
    sentence of another document), and query "i" judged relevant to document "i" itself."""
    raw = _docs(data_dir)
    docs = [{"_id": str(i + 1), "title": d["title"], "text": d["text"]} for i, d in enumerate(raw)]
    queries = {str(i + 1): f"what is said about {raw[i]['title'].lower()}" for i in range(20)}
    qrels = {str(i + 1): {str(i + 1): 1} for i in range(20)}
    return _write(tmp_path_factory.mktemp("conv") / "data" / "numeric", docs, queries, qrels)


def test_auto_decides_from_the_data(arguana_like, numeric_ids):
    on, off = identical_ids(load_beir(arguana_like)), identical_ids(load_beir(numeric_ids))
    assert (on.ignore, on.same, on.shared, on.queries) == (True, 20, 20, 20)
    assert (off.ignore, off.same, off.shared) == (False, 0, 20)
    assert identical_ids(load_beir(numeric_ids), True).ignore and not identical_ids(load_beir(arguana_like), False).ignore
    assert "ignore_identical_ids=true (auto: 20 of 20" in on.describe()


def test_real_sets_keep_identical_ids(data_dir):
    """Cranfield, CACM, MED, NPL share query and document ids, never their texts; SciFact shares none."""
    for name in ("scifact", "cranfield", "cacm", "med", "npl"):
        decided = identical_ids(load_beir(data_dir / name))
        assert not decided.ignore, (name, decided.describe())


def test_search_and_bm25_drop_the_identical_document_after_retrieval():
    run = {"q1": {"q1": 9.0, "d2": 5.0}, "q2": {"d1": 1.0}}
    assert drop_identical(run) == {"q1": {"d2": 5.0}, "q2": {"d1": 1.0}}
    docs = np.eye(3, dtype=np.float32)
    qrels = {"a": {"c": 1}}
    queries = np.array([[1.0, 0.0, 0.5]], dtype=np.float32)  # nearest "a" (itself), then "c"
    keep = search_metrics(docs, ["a", "b", "c"], queries, ["a"], qrels, k=3, k_values=[1])
    drop = search_metrics(docs, ["a", "b", "c"], queries, ["a"], qrels, k=3, k_values=[1], ignore_identical_ids=True)
    assert keep["nDCG@1"] == 0.0 and drop["nDCG@1"] == 1.0
    bm = bm25_run(["a", "c"], ["red apples grow", "red trees"], ["a"], ["red apples grow"], k=2)
    assert list(bm["a"])[0] == "a" and list(drop_identical(bm)["a"]) == ["c"]


def _run(data: Path, out: Path, *extra: str) -> dict:
    rc = main(["run", f"data.data_dir={data.parent}", f"data.dataset={data.name}", f"run.output_dir={out}",
               "run.dims=[32,16]", "run.settings=[corpus-only]", "run.methods=[full,bm25]", "run.progress=false",
               "run.search_k=20", "run.k_values=[10,20]", "track.backend=none", "run.anchors=none", *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def test_run_evaluation_and_bm25_follow_the_convention(arguana_like, numeric_ids, tmp_path):
    auto = _run(arguana_like, tmp_path / "auto")
    kept = _run(arguana_like, tmp_path / "kept", "data.ignore_identical_ids=false")
    assert auto["meta"]["ignore_identical_ids"] is True and kept["meta"]["ignore_identical_ids"] is False
    for method, key in (("full", "384"), ("bm25", "sparse")):
        a = auto["settings"]["corpus-only"][method][key]["nDCG@10"]
        k = kept["settings"]["corpus-only"][method][key]["nDCG@10"]
        assert a > k, (method, a, k)  # kept: every query ranks itself first, an unjudged document
    numeric = _run(numeric_ids, tmp_path / "numeric")
    forced = _run(numeric_ids, tmp_path / "forced", "data.ignore_identical_ids=true")
    assert numeric["meta"]["ignore_identical_ids"] is False
    # the numeric set's judgments ARE the identical ids: dropping them would delete real relevance
    assert numeric["settings"]["corpus-only"]["bm25"]["sparse"]["nDCG@10"] > \
        forced["settings"]["corpus-only"]["bm25"]["sparse"]["nDCG@10"] == 0.0


def test_a_query_anchor_never_samples_its_own_document(arguana_like, numeric_ids, tmp_path):
    """Unlabelled query anchors (holdout of the test queries) of the ArguAna-like set carry their
    own document's row, so neither the exact search nor the S-XBM queue samples it."""
    from smec_dist.config import load_config
    from smec_dist.method.memory import QueueSampler
    from smec_dist.recipes.adapter import Job
    from smec_dist.train.samplers import ExactSampler

    def job_for(data: Path) -> Job:
        cfg = load_config(None, [f"data.data_dir={data.parent}", f"data.dataset={data.name}", "run.dims=[32,16]",
                                 f"run.output_dir={tmp_path / data.name}", "run.anchors=holdout:0.5",
                                 "run.settings=[unsupervised-queries]", "run.progress=false", "track.backend=none",
                                 f"cache.dir={tmp_path / 'cache' / data.name}"])
        job = Job(cfg)
        job.setup()
        return job

    job = job_for(arguana_like)
    data = job.train_set("unsupervised-queries")
    rows = {d: i for i, d in enumerate(job.doc_ids)}
    assert data.anchor_doc.tolist() == [rows[q] for q in job.anchor_qids] and len(job.anchor_qids) == 10
    own = data.anchor_doc
    exact = ExactSampler(data, k=5)
    assert not (exact.rows == own.view(-1, 1)).any()  # without the exclusion, each anchor's own doc ranks first
    assert ((data.anchors @ data.corpus.T).argmax(1) == own).all()
    queue = QueueSampler(data.corpus, 64, True, torch.Generator().manual_seed(0))
    samples = queue.sample(data.anchors, own, 5)
    picked = samples.rows[samples.inverse]  # (n, k) corpus rows
    assert not (picked == own.view(-1, 1)).any()
    job.cleanup()
    numeric = job_for(numeric_ids)
    assert (numeric.train_set("unsupervised-queries").anchor_doc == -1).all()
    numeric.cleanup()


def test_mteb_local_task_takes_the_same_setting(arguana_like, numeric_ids):
    from smec_dist.evaluation.mteb_eval import local_retrieval_task

    assert local_retrieval_task(arguana_like).ignore_identical_ids is True
    assert local_retrieval_task(numeric_ids).ignore_identical_ids is False
    assert local_retrieval_task(numeric_ids, ignore_identical_ids=True).ignore_identical_ids is True


def test_mteb_scores_the_arguana_like_set_as_we_do(arguana_like, tmp_path):
    """Through our MTEB wrapper, with the convention on both sides: the same nDCG@10."""
    from smec_dist.recipes.evaluate import SmecModel, evaluate_model
    from smec_dist.config import load_config

    cfg = load_config(None, [f"data.data_dir={arguana_like.parent}", f"data.dataset={arguana_like.name}",
                             "run.progress=false", "run.dims=[32,16]"])
    model = SmecModel.from_model("minilm")
    result = evaluate_model(model, cfg, tmp_path / "eval", methods=[], mteb_tasks=[arguana_like.name])
    ours = result["metrics"]["full"]["384"]["nDCG@10"]
    assert result["ignore_identical_ids"] is True
    assert abs(result["mteb"][arguana_like.name]["ndcg_at_10"] - ours) <= 5e-6 + 1e-12


def test_judgments_naming_absent_ids_are_skipped_with_one_warning(arguana_like, tmp_path, caplog):
    data = tmp_path / "argu"
    import shutil

    shutil.copytree(arguana_like, data)
    with open(data / "qrels" / "test.tsv", "a", encoding="utf-8") as fh:
        fh.write("d0\tnot-a-doc\t1\nd1\tnot-a-doc-either\t1\nq-missing\td3\t1\n")
    with caplog.at_level(logging.WARNING):
        ds = load_beir(data)
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "2 name a document absent from corpus.jsonl (first: line 22, 'not-a-doc')" in warnings[0]
    assert "1 name a query absent from queries.jsonl" in warnings[0] and str(data / "qrels" / "test.tsv") in warnings[0]
    assert ds.qrels["test"]["d0"] == {"d20": 1}
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nzz\td1\t1\n")
    with pytest.raises(SmecError, match="no judgment left"):
        load_beir(data)
