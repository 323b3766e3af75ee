"""Metrics against hand-computed values, exact search against numpy, BM25 sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smec_dist.errors import SmecError
from smec_dist.evaluation import (
    HEADLINE,
    bm25_name,
    bm25_run,
    evaluate_run,
    exact_search,
    per_query,
    search_run,
    to_run,
)

# --------------------------------------------------------------------------- metrics
#
# q1: qrels d1=2, d2=1.  Run ranks: d3 (1), d1 (2), d4 (3), d2 (4).
#   DCG@10  = 2/log2(3) + 1/log2(5)  = 1.261860 + 0.430677 = 1.692537
#   IDCG@10 = 2/log2(2) + 1/log2(3)  = 2        + 0.630930 = 2.630930
#   nDCG@10 = 1.692537 / 2.630930    = 0.643322
#   MRR@10  = 1/2 (first relevant, d1, at rank 2)
#   Recall@10 = 2/2 = 1;  P@10 = 2/10 = 0.2
#   AP      = (1/2 [d1 at 2: 1 of 2] + 2/4 [d2 at 4: 2 of 4]) / 2 relevant = 0.5
# q2: qrels e1=1, e2=1, e5=0 (judged, not relevant).  Run ranks: e5 (1), e3 (2), e1 (3), e4 (4);
#     e2 is never retrieved.
#   DCG@10  = 1/log2(4) = 0.5;  IDCG@10 = 1 + 1/log2(3) = 1.630930;  nDCG@10 = 0.306574
#   MRR@10  = 1/3 (first relevant at rank 3)
#   Recall@10 = 1/2;  P@10 = 1/10;  AP = (1/3) / 2 relevant = 1/6
# q3: qrels f1=1, absent from the run -> 0 everywhere, but still in the mean's denominator.

QRELS = {
    "q1": {"d1": 2, "d2": 1},
    "q2": {"e1": 1, "e2": 1, "e5": 0},
    "q3": {"f1": 1},
}
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6},
    "q2": {"e5": 0.9, "e3": 0.8, "e1": 0.7, "e4": 0.6},
    "q_not_in_qrels": {"x": 1.0},
}

NDCG_Q1 = (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
NDCG_Q2 = (1 / math.log2(4)) / (1 + 1 / math.log2(3))


def test_hand_computed_constants() -> None:
    # Guard the arithmetic in the comment above.
    assert NDCG_Q1 == pytest.approx(0.643322, abs=1e-6)
    assert NDCG_Q2 == pytest.approx(0.306574, abs=1e-6)


def test_evaluate_run_hand_computed() -> None:
    m = evaluate_run(QRELS, RUN, k_values=(10, 100))
    assert m["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2 + 0) / 3)
    assert m["MRR@10"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert m["Recall@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m["MAP@10"] == pytest.approx((1 / 2 + 1 / 6 + 0) / 3)
    assert m["P@10"] == pytest.approx((2 / 10 + 1 / 10 + 0) / 3)
    # Everything is retrieved within 10, so @100 only changes P (denominator 100).
    assert m["Recall@100"] == pytest.approx(m["Recall@10"])
    assert m["MAP@100"] == pytest.approx(m["MAP@10"])
    assert m["nDCG@100"] == pytest.approx(m["nDCG@10"])
    assert m["P@100"] == pytest.approx((2 / 100 + 1 / 100) / 3)
    assert set(HEADLINE) <= set(m)
    assert list(m) == [f"{n}@{k}" for k in (10, 100) for n in ("nDCG", "MRR", "Recall", "MAP", "P")]


def test_cutoff_truncates_mrr_and_ndcg() -> None:
    # At k=2, q2's first relevant doc (rank 3) is cut off: MRR@2 = 0 for q2.
    # q1 @2: DCG = 2/log2(3) = 1.261860, IDCG = 2.630930 -> 0.479625; Recall@2 = 1/2.
    m = evaluate_run(QRELS, RUN, k_values=(2,))
    assert m["MRR@2"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert m["nDCG@2"] == pytest.approx((2 / math.log2(3)) / (2 + 1 / math.log2(3)) / 3)
    assert m["Recall@2"] == pytest.approx((1 / 2) / 3)


def test_missing_query_scores_zero() -> None:
    only_q3 = {"q3": QRELS["q3"]}
    assert all(v == 0.0 for v in evaluate_run(only_q3, RUN).values())
    # An empty run entry is the same as a missing one.
    assert all(v == 0.0 for v in evaluate_run(only_q3, {"q3": {}}).values())


def test_per_query() -> None:
    pq = per_query(QRELS, RUN)
    assert list(pq) == ["q1", "q2", "q3"]
    assert pq["q1"] == pytest.approx(NDCG_Q1)
    assert pq["q2"] == pytest.approx(NDCG_Q2)
    assert pq["q3"] == 0.0
    assert per_query(QRELS, RUN, "MRR@10")["q2"] == pytest.approx(1 / 3)
    with pytest.raises(SmecError, match="nDCG@x"):
        per_query(QRELS, RUN, "nDCG@x")


def test_ties_broken_by_doc_id() -> None:
    # "a" and "b" tie; our order is doc id ascending, so the relevant "b" is rank 2
    # (trec_eval alone would break the tie the other way and give 1.0).
    qrels = {"q": {"b": 1}}
    run = {"q": {"b": 1.0, "a": 1.0}}
    assert evaluate_run(qrels, run)["MRR@10"] == pytest.approx(0.5)
    # ...and truncating at 1 keeps "a", not "b".
    assert evaluate_run(qrels, run, k_values=(1,))["MRR@1"] == 0.0


def test_graded_and_negative_relevance() -> None:
    # A -1 grade is "not relevant", not a negative gain: nDCG = 1 with the relevant doc first.
    qrels = {"q": {"r": 3, "bad": -1}}
    run = {"q": {"r": 2.0, "bad": 1.0}}
    m = evaluate_run(qrels, run)
    assert m["nDCG@10"] == pytest.approx(1.0)
    assert m["Recall@10"] == pytest.approx(1.0)
    # The -1 doc at rank 1 must not count as relevant either.
    assert evaluate_run(qrels, {"q": {"bad": 2.0, "r": 1.0}})["MRR@10"] == pytest.approx(0.5)


def test_bad_inputs() -> None:
    with pytest.raises(SmecError, match="qrels"):
        evaluate_run({}, RUN)
    with pytest.raises(SmecError, match="k_values"):
        evaluate_run(QRELS, RUN, k_values=(0,))


# --------------------------------------------------------------------------- exact search


def _brute_force(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries.astype(np.float64) @ docs.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def test_exact_search_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((37, 32)).astype(np.float32)
    scores, idx = exact_search(docs, queries, k=10, use_gpu="no", batch_size=8)
    ref_scores, ref_idx = _brute_force(docs, queries, 10)
    assert scores.shape == (37, 10) and scores.dtype == np.float32
    assert idx.shape == (37, 10) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)  # continuous random data: no ties
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_exact_search_accepts_non_contiguous_float64() -> None:
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((64, 16))  # float64
    queries = rng.standard_normal((16, 5)).T  # Fortran-ordered view
    scores, idx = exact_search(docs, queries, k=3, use_gpu="no")
    np.testing.assert_array_equal(idx, _brute_force(docs, queries, 3)[1])


def test_exact_search_k_clipped() -> None:
    rng = np.random.default_rng(2)
    docs = rng.standard_normal((5, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    scores, idx = exact_search(docs, queries, k=100, use_gpu="no")
    assert scores.shape == idx.shape == (3, 5)
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3, 4]


def test_exact_search_dim_mismatch() -> None:
    with pytest.raises(SmecError, match=r"384.*96"):
        exact_search(np.zeros((4, 384), np.float32), np.zeros((2, 96), np.float32), k=2)


def test_exact_search_gpu_yes_without_gpu() -> None:
    from smec_dist.evaluation.search import gpu_available

    if gpu_available():
        pytest.skip("faiss has a GPU here")
    with pytest.raises(SmecError, match="use_gpu"):
        exact_search(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), k=1, use_gpu="yes")


def test_to_run_and_search_run() -> None:
    docs = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    run = search_run(docs, ["a", "b", "c"], queries, ["q1", "q2"], k=2, use_gpu="no")
    assert list(run["q1"]) == ["a", "c"]
    assert run["q1"]["c"] == pytest.approx(0.6)
    assert list(run["q2"]) == ["b", "c"]
    # faiss pads with -1 when it has fewer results; those are dropped.
    assert to_run(["q"], ["a"], np.array([[1.0, -np.inf]]), np.array([[0, -1]])) == {"q": {"a": 1.0}}


# --------------------------------------------------------------------------- BM25

DOCS = {
    "d_cat": "The cat sat on the mat and the cat purred.",
    "d_dog": "Dogs bark at the mailman every morning.",
    "d_stock": "Stock markets fell sharply on Monday.",
    "d_empty": "",
    "d_stop": "the and of",
}


def test_bm25_ranks_matching_doc_first() -> None:
    run = bm25_run(list(DOCS), list(DOCS.values()), ["q1", "q2", "q3"],
                   ["cat on a mat", "stock markets", "zebra"], k=10)
    assert next(iter(run["q1"])) == "d_cat"
    assert next(iter(run["q2"])) == "d_stock"
    assert run["q3"] == {}  # no shared term: empty, but present
    assert "d_empty" not in run["q1"] and "d_stop" not in run["q1"]
    assert all(s > 0 for docs in run.values() for s in docs.values())


def test_bm25_deterministic_and_k() -> None:
    texts = [f"apple banana {'cherry ' * (i % 3)}" for i in range(20)]
    ids = [f"doc{i:02d}" for i in range(20)]
    a = bm25_run(ids, texts, ["q"], ["apple cherry"], k=5)
    b = bm25_run(ids, texts, ["q"], ["apple cherry"], k=5)
    assert a == b and list(a["q"]) == list(b["q"])
    assert len(a["q"]) == 5
    ranked = list(a["q"].items())
    # Ties are ordered by doc id.
    for (d1, s1), (d2, s2) in zip(ranked, ranked[1:]):
        assert s1 > s2 or (s1 == s2 and d1 < d2)


def test_bm25_name_and_errors() -> None:
    assert bm25_name().startswith("BM25 (bm25s, k1=1.2, b=0.75, stemmer=")
    with pytest.raises(SmecError, match="doc_ids"):
        bm25_run(["a"], ["x", "y"], ["q"], ["x"])
    with pytest.raises(SmecError, match="doc_texts"):
        bm25_run(["a"], [""], ["q"], ["x"])
    with pytest.raises(SmecError, match="stopwords"):
        bm25_run(["a"], ["hello world"], ["q"], ["hello"], stopwords="klingon")


def test_bm25_stemmer_is_an_explicit_choice() -> None:
    """Scores never depend on whether PyStemmer happens to be installed: the stemmer is named."""
    ids, docs = ["a", "b"], ["running fast every day", "a slow walk"]
    plain = bm25_run(ids, docs, ["q"], ["runs"], k=2)  # no stemming: "runs" is not "running"
    stemmed = bm25_run(ids, docs, ["q"], ["runs"], k=2, stemmer="english")  # both stem to "run"
    assert plain == {"q": {}} and list(stemmed["q"]) == ["a"]
    assert "stemmer=english" in bm25_name(stemmer="english") and "stemmer=none" in bm25_name()
    with pytest.raises(SmecError, match="stemmer: 'klingon'"):
        bm25_run(ids, docs, ["q"], ["runs"], stemmer="klingon")
