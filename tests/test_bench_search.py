"""bench/search.py on synthetic data: code sizes, exactness of fp32 and binary search, outputs, bad input.

Never asserts on speed: the timings are only checked to be positive numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.search import (
    CODES,
    build_index,
    check_dims,
    head_method,
    main,
    plot,
    reference_methods,
    run_benchmark,
    search,
    sign_bits,
)
from bench.common import write_json
from smec_dist.errors import SmecError
from smec_dist.evaluation.metrics import evaluate_run
from smec_dist.evaluation.search import to_run
from smec_dist.method.smrl import SMECHead
from smec_dist.method.export import save_head

FULL, N_DOCS, N_Q, K = 64, 150, 8, 20
HEAD_DIMS = [32, 16, 12]  # 12: binary codes with 4 pad bits


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict:
    """Random unit docs; each query is a noisy copy of its one relevant doc."""
    rng = np.random.default_rng(0)
    docs = unit(rng.standard_normal((N_DOCS, FULL)))  # (n_docs, D)
    rel = rng.choice(N_DOCS, N_Q, replace=False)
    queries = unit(docs[rel] + 0.8 * rng.standard_normal((N_Q, FULL)) / np.sqrt(FULL))  # (n_q, D)
    doc_ids = [f"d{i}" for i in range(N_DOCS)]
    query_ids = [f"q{i}" for i in range(N_Q)]
    qrels = {q: {doc_ids[r]: 1} for q, r in zip(query_ids, rel)}
    return {"docs": docs, "queries": queries, "doc_ids": doc_ids, "query_ids": query_ids, "qrels": qrels}


@pytest.fixture(scope="module")
def head_path(tmp_path_factory):
    torch.manual_seed(0)
    return save_head(SMECHead(FULL, HEAD_DIMS), tmp_path_factory.mktemp("head") / "smec.safetensors")


@pytest.fixture(scope="module")
def results(data, head_path) -> dict:
    methods = [head_method(head_path), *reference_methods(torch.from_numpy(data["docs"]))]
    return run_benchmark(data["docs"], data["queries"], data["doc_ids"], data["query_ids"], data["qrels"],
                         methods, dims=[FULL, 32, 12], k=K, repeats=1, threads=[1])


def test_bytes_per_doc_per_code(results, head_path):
    expect = {"fp32": 4, "fp16": 2, "int8": 1}
    seen = set()
    for row in results["rows"]:
        d, code = row["dim"], row["code"]
        want = expect[code] * d if code in expect else -(-d // 8)
        assert row["bytes/doc"] == want, row
        # the serialised index holds the codes plus a header (and int8's trained min/max)
        assert want <= row["index bytes/doc"] < want + 64, row
        assert row["ms/query"]["1"] > 0
        seen.add((row["method"], d, code))
    methods = [f"smec[{head_path.parent.name}]", "truncation", "pca"]
    assert seen == {("full", FULL, c) for c in CODES} | {(m, d, c) for m in methods for d in (32, 12) for c in CODES}


def test_fp32_equals_exact_numpy_search(data, results):
    docs, qs = data["docs"], data["queries"]
    scores, indices = search(build_index("fp32", docs), "fp32", qs, K)
    ip = qs @ docs.T  # (n_q, n_docs)
    order = np.argsort(-ip, axis=1)[:, :K]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(scores, np.take_along_axis(ip, order, 1), rtol=1e-5, atol=1e-6)
    # the benchmark's fp32 full-width row scores the same run
    run = to_run(data["query_ids"], data["doc_ids"], np.take_along_axis(ip, order, 1), order)
    expect = evaluate_run(data["qrels"], run, (10, 100))
    row = next(r for r in results["rows"] if r["method"] == "full" and r["code"] == "fp32")
    assert row["metrics"] == pytest.approx(expect)
    assert row["metrics"]["nDCG@10"] > 0.5  # queries sit next to their relevant doc


@pytest.mark.parametrize("dim", [24, 12])
def test_binary_codes_and_hamming(data, dim):
    docs, qs = data["docs"][:, :dim], data["queries"][:, :dim]
    index = build_index("binary", docs)
    nbytes = -(-dim // 8)
    assert sign_bits(docs).shape == (N_DOCS, nbytes)
    assert index.code_size == nbytes and index.ntotal == N_DOCS
    scores, indices = search(index, "binary", qs, N_DOCS)
    # +-1 inner product of the sign vectors = d - 2 * hamming over the d real dims
    expect = np.sign(qs) @ np.sign(docs).T  # (n_q, n_docs); no exact zeros in random data
    np.testing.assert_array_equal(scores, np.take_along_axis(expect, indices, 1))
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("dim", [24, 12])
def test_binary_rescore_is_float_query_times_sign_codes(data, dim):
    docs, qs = data["docs"][:, :dim], data["queries"][:, :dim]
    index = build_index("binary+rescore", docs)
    # every doc a candidate: the result is the exact ranking by q . sign(doc)
    scores, indices = search(index, "binary+rescore", qs, K, rescore_factor=N_DOCS)
    ip = qs @ np.sign(docs).T  # (n_q, n_docs)
    np.testing.assert_allclose(scores, np.take_along_axis(ip, indices, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, -np.sort(-ip, axis=1)[:, :K], rtol=1e-5, atol=1e-5)


def test_json_and_png_written(results, tmp_path):
    out = write_json(results, tmp_path / "a" / "search.json")
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    png = plot(results, tmp_path / "b" / "search.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dim_not_in_head_is_one_line_error(data, head_path):
    with pytest.raises(SmecError, match=r"--dims: 48 is not a dim of head .*smec.safetensors \(its dims: 32, 16, 12\)"):
        check_dims([head_method(head_path)], [FULL, 48], FULL)
    with pytest.raises(SmecError, match="between 1 and the backbone width 64"):
        check_dims([], [128], FULL)


def _one_error_line(capsys, argv, *needles):
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.search: error: "), cap.err
    assert "Traceback" not in cap.out + cap.err
    for needle in needles:
        assert needle in lines[0]


def test_cli_bad_input_is_one_line(capsys, tmp_path, head_path):
    _one_error_line(capsys, ["--head", str(tmp_path / "nope.safetensors")], "nope.safetensors: no such head file")
    # checked against the head before the cache is opened (this one does not exist)
    _one_error_line(capsys, ["--head", str(head_path), "--dims", "64", "40", "--cache", str(tmp_path / "no-cache")],
                    "--dims: 40 is not a dim of head")
    _one_error_line(capsys, ["--head", str(head_path), "--dims", "32", "--cache", str(tmp_path / "no-cache")],
                    "no embedding cache here")
