"""Candidate re-ranking (smec_dist.evaluation.rerank): candidate files, scoring, ``smec rerank``.

Most command tests use a fake encoder (bag of hashed words), since the point there is the
plumbing; one runs the real MiniLM on a few toy-set queries.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from smec_dist import backbone
from smec_dist.cli import main
from smec_dist.data import load_beir
from smec_dist.data.beir import doc_text
from smec_dist.data.store import PassageStore
from smec_dist.data.toy import make_toy_dataset
from smec_dist.errors import SmecError
from smec_dist.evaluation.rerank import load_candidates, rerank, write_trec_run
from smec_dist.method.smrl import SMECHead
from smec_dist.method.export import save_head
from tests.test_cli import assert_one_error_line


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


class FakeEncoder:
    """Hashed bag of words, 16 dims: deterministic, instant, and lexical enough to rank."""

    dim = 16

    def encode(self, texts, batch_size=64, progress=True, desc="encode"):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        return out


@pytest.fixture()
def fake_encoder(monkeypatch):
    loaded = []
    monkeypatch.setattr(backbone, "load_encoder", lambda model, **kw: loaded.append(model) or FakeEncoder())
    return loaded


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", n_docs=60, n_queries=16, n_topics=4)


@pytest.fixture(scope="module")
def toy_candidates(toy) -> dict[str, list[str]]:
    """For every test query (8): its relevant docs and 5 others, shuffled."""
    ds = load_beir(toy)
    rng = random.Random(0)
    ids = ds.doc_ids()
    out = {}
    for qid, rel in ds.qrels["test"].items():
        others = [d for d in rng.sample(ids, 10) if d not in rel][:5]
        pids = list(rel) + others
        rng.shuffle(pids)
        out[qid] = pids
    return out


def _pairs_file(path: Path, cands: dict[str, list[str]]) -> Path:
    return _write(path, [f"{q}\t{p}" for q, pids in cands.items() for p in pids])


# --------------------------------------------------------------------------- candidate files


def test_three_formats(tmp_path):
    trec = load_candidates(_write(tmp_path / "run.trec", [
        "q1 Q0 d1 1 12.5 bm25", "q1 Q0 d2 2 11 bm25", "", "q2\tQ0\td1\t1\t-3e1\tbm25",
    ]))
    assert (trec.format, trec.lists, trec.n_pairs) == ("trec", {"q1": ["d1", "d2"], "q2": ["d1"]}, 3)
    assert trec.pids() == ["d1", "d2"] and not trec.query_texts

    marco = load_candidates(_write(tmp_path / "top1000.dev", [
        "1\t10\twhat is a comet\tA comet is an icy body.", "1\t11\twhat is a comet\tComets have tails.",
        "2\t10\tice bodies\tA comet is an icy body.",
    ]))
    assert marco.format == "msmarco" and marco.lists == {"1": ["10", "11"], "2": ["10"]}
    assert marco.query_texts == {"1": "what is a comet", "2": "ice bodies"}
    assert marco.passage_texts == {"10": "A comet is an icy body.", "11": "Comets have tails."}

    pairs = load_candidates(_write(tmp_path / "pairs.tsv", ["q1\td9", "q1\td8", "q2\td9"]))
    assert pairs.format == "pairs" and pairs.lists == {"q1": ["d9", "d8"], "q2": ["d9"]}


@pytest.mark.parametrize("lines, needle", [
    (["q1 Q0 d1 1 1.0 t", "q1 Q0 d2 2 1.0"], ":2: expected 6 columns"),
    (["q1 Q0 d1 1 1.0 t", "q1 Q0 d2 two 1.0 t"], ":2: rank 'two' is not an integer"),
    (["q1 Q0 d1 1 1.0 t", "", "q1 Q0 d2 2 nan t"], ":3: score 'nan' is not a finite number"),
    (["q1 Q0 d1 1 1.0 t", "q1 Q0 d1 2 0.5 t"], ":2: passage 'd1' is listed twice for query 'q1'"),
    (["q1\td1", "q1\td2\textra"], ":2: expected 2 columns"),
    (["q1 d1 x"], ":1: cannot tell the candidates format from 3 column(s)"),
    (["1\t10\tq\tp", "1\t11\tq\tp\tx"], ":2: expected 4 tab-separated columns"),
    (["1\t10\tq\tp", "1\t11\t \tp"], ":2: empty query text"),
    (["1\t10\tq\tp", "1\t11\tq2\tp"], ":2: the text of query '1' differs"),
])
def test_bad_lines(tmp_path, lines, needle):
    path = _write(tmp_path / "cands.txt", lines)
    with pytest.raises(SmecError) as info:
        load_candidates(path)
    assert f"{path}{needle}" in str(info.value), str(info.value)


def test_empty_or_missing_file(tmp_path):
    with pytest.raises(SmecError, match="no candidates"):
        load_candidates(_write(tmp_path / "empty.tsv", ["", "  "]))
    with pytest.raises(SmecError, match="file not found"):
        load_candidates(tmp_path / "missing.tsv")


# --------------------------------------------------------------------------- scoring


def test_rerank_known_order():
    q = {"q": np.array([3.0, 0.0])}
    docs = {
        "far": np.array([-1.0, 0.0]),      # cosine -1
        "side": np.array([0.0, 5.0]),      # 0
        "half": np.array([10.0, 10.0]),    # 0.707: long, but the vectors are normalised first
        "same": np.array([0.5, 0.0]),      # 1
        "same2": np.array([2.0, 0.0]),     # 1, tie broken by id
        "zero": np.array([0.0, 0.0]),      # 0, not NaN
    }
    run = rerank({"q": list(docs)}, q, docs)
    assert list(run["q"]) == ["same", "same2", "half", "side", "zero", "far"]
    assert run["q"]["half"] == pytest.approx(2 ** -0.5)
    assert run["q"]["far"] == pytest.approx(-1.0)


def test_rerank_matches_a_full_product():
    rng = np.random.default_rng(0)
    qe, de = rng.normal(size=(3, 8)), rng.normal(size=(20, 8))
    cands = {f"q{i}": [f"d{j}" for j in rng.permutation(20)[:7]] for i in range(3)}
    run = rerank(cands, {f"q{i}": v for i, v in enumerate(qe)}, {f"d{j}": v for j, v in enumerate(de)})
    full = (qe / np.linalg.norm(qe, axis=1, keepdims=True)) @ (de / np.linalg.norm(de, axis=1, keepdims=True)).T
    for i in range(3):
        expected = sorted(cands[f"q{i}"], key=lambda d: -full[i, int(d[1:])])
        assert list(run[f"q{i}"]) == expected
        assert run[f"q{i}"][expected[0]] == pytest.approx(full[i, int(expected[0][1:])], abs=1e-6)


def test_rerank_errors():
    vec = np.ones(4)
    with pytest.raises(SmecError, match="no embedding for query 'q2'"):
        rerank({"q2": ["d"]}, {"q": vec}, {"d": vec})
    with pytest.raises(SmecError, match="no embedding for passage 'x'"):
        rerank({"q": ["d", "x"]}, {"q": vec}, {"d": vec})
    with pytest.raises(SmecError, match="dim 4 but its candidates have dim 3"):
        rerank({"q": ["d"]}, {"q": vec}, {"d": np.ones(3)})
    with pytest.raises(SmecError, match="different widths"):
        rerank({"q": ["d", "e"]}, {"q": vec}, {"d": vec, "e": np.ones(3)})
    with pytest.raises(SmecError, match="NaN"):
        rerank({"q": ["d"]}, {"q": vec}, {"d": np.full(4, np.nan)})


def test_write_trec_run_round_trips(tmp_path):
    path = write_trec_run({"q1": {"b": 0.5, "a": 0.5, "c": 0.9}, "q2": {"a": -1.0}}, tmp_path / "run.trec")
    assert path.read_text().splitlines() == [
        "q1 Q0 c 1 0.900000 smec-rerank", "q1 Q0 a 2 0.500000 smec-rerank",
        "q1 Q0 b 3 0.500000 smec-rerank", "q2 Q0 a 1 -1.000000 smec-rerank",
    ]
    assert load_candidates(path).lists == {"q1": ["c", "a", "b"], "q2": ["a"]}
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]


# --------------------------------------------------------------------------- the command


def _rerank_cli(*argv) -> list[str]:
    return ["rerank", "--no-progress", *map(str, argv)]


def test_cli_with_minilm(toy, toy_candidates, tmp_path, capsys):
    cands = _pairs_file(tmp_path / "cands.tsv", toy_candidates)
    out = tmp_path / "run.trec"
    assert main(_rerank_cli("--candidates", cands, "--dataset", toy, "--output", out)) == 0
    printed = capsys.readouterr().out
    assert "8 queries" in printed and "re-ranking:" in printed and "ms/query" in printed, printed
    ndcg = float(re.search(r"nDCG@10 ([0-9.]+)", printed).group(1))
    # 1-3 relevant among 6-8 candidates: a random order scores 0.56 on average (0.74 at best
    # in 200 draws); MiniLM measured 0.9228.
    assert ndcg > 0.8, printed
    run = load_candidates(out)
    assert run.format == "trec" and {q: sorted(p) for q, p in run.lists.items()} == \
        {q: sorted(p) for q, p in toy_candidates.items()}


def test_cli_store_and_corpus_agree(toy, toy_candidates, tmp_path, capsys, fake_encoder):
    cands = _pairs_file(tmp_path / "cands.tsv", toy_candidates)
    with PassageStore.build(tmp_path / "toy.sqlite", toy / "corpus.jsonl"):
        pass
    assert main(_rerank_cli("--candidates", cands, "--dataset", toy, "--output", tmp_path / "a.trec")) == 0
    assert main(_rerank_cli("--candidates", cands, "--dataset", toy, "--output", tmp_path / "b.trec",
                            "--store", tmp_path / "toy.sqlite", "--model", "fake")) == 0
    assert (tmp_path / "a.trec").read_bytes() == (tmp_path / "b.trec").read_bytes()
    assert fake_encoder == ["minilm", "fake"]
    assert capsys.readouterr().out.count("test (8 queries): nDCG@10") == 2


def test_cli_msmarco_texts_from_the_file_and_a_head(toy, tmp_path, capsys, fake_encoder):
    ds = load_beir(toy)
    qids = list(ds.qrels["test"])[:3]
    lines = [f"{q}\t{d}\t{ds.queries[q]}\t{doc_text(ds.corpus[d])}" for q in qids for d in ds.doc_ids()[:20]]
    cands = _write(tmp_path / "top1000.tsv", lines)
    head = save_head(SMECHead(16, [8, 4]), tmp_path / "smec.safetensors")
    # No --store and no corpus.jsonl: the passages' texts must come from the file.
    root = tmp_path / "nocorpus"
    (root / "qrels").mkdir(parents=True)
    for name in ("queries.jsonl", "qrels/test.tsv"):
        (root / name).write_bytes((toy / name).read_bytes())
    assert main(_rerank_cli("--candidates", cands, "--dataset", root, "--head", head, "--dim", 4,
                            "--output", tmp_path / "run.trec")) == 0
    printed = capsys.readouterr().out
    assert "(msmarco): 3 queries, 60 candidates, 20 distinct passages" in printed
    assert "dim 4 (smec.safetensors)" in printed
    run = load_candidates(tmp_path / "run.trec")
    assert list(run.lists) == qids and all(len(p) == 20 for p in run.lists.values())


def test_cli_without_qrels_skips_metrics(toy, toy_candidates, tmp_path, capsys, fake_encoder):
    cands = _pairs_file(tmp_path / "cands.tsv", toy_candidates)
    assert main(_rerank_cli("--candidates", cands, "--dataset", toy, "--split", "dev",
                            "--output", tmp_path / "run.trec")) == 0
    assert "dev.tsv: not found, so no metrics" in capsys.readouterr().out


@pytest.mark.parametrize("case", [
    "unknown-query", "unknown-passage", "unknown-in-store", "dim-without-head", "head-without-dim",
    "bad-dim", "head-width", "no-output-folder", "bad-line", "no-dataset",
])
def test_cli_errors_one_line(toy, toy_candidates, tmp_path, capsys, fake_encoder, case):
    good = [f"{q}\t{p}" for q, pids in toy_candidates.items() for p in pids]
    cands = _write(tmp_path / "cands.tsv", good)
    head = save_head(SMECHead(16, [8]), tmp_path / "h16.safetensors")
    argv = ["--candidates", cands, "--dataset", toy, "--output", tmp_path / "run.trec"]
    if case == "unknown-query":
        _write(cands, good + ["q-none\tdoc00"])
        needles = [f"{cands}:{len(good) + 1}", "query id 'q-none' is not in", "queries.jsonl"]
    elif case == "unknown-passage":
        _write(cands, good[:2] + [good[0].split("\t")[0] + "\tdoc-none"] + good[2:])
        needles = [f"{cands}:3", "passage id 'doc-none' is not in", "corpus.jsonl"]
    elif case == "unknown-in-store":
        db = tmp_path / "small.sqlite"
        _write(tmp_path / "small.jsonl", [json.dumps({"_id": "doc00", "text": "t"})])
        PassageStore.build(db, tmp_path / "small.jsonl").close()
        argv += ["--store", db]
        needles = [f"{cands}:", "is not in", str(db), "more unknown"]
    elif case == "dim-without-head":
        argv += ["--dim", 8]
        needles = ["--dim needs --head"]
    elif case == "head-without-dim":
        argv += ["--head", head]
        needles = ["--head needs --dim"]
    elif case == "bad-dim":
        argv += ["--head", head, "--dim", 5]
        needles = ["--dim 5 is not one of", "[8]"]
    elif case == "head-width":
        argv += ["--head", save_head(SMECHead(12, [8]), tmp_path / "h12.safetensors"), "--dim", 8]
        needles = ["made for width 12", "gives 16"]
    elif case == "no-output-folder":
        argv[-1] = tmp_path / "no" / "run.trec"
        needles = ["--output", "not found"]
    elif case == "bad-line":
        _write(cands, good + ["q1 d1 d2"])
        needles = [f"{cands}:{len(good) + 1}", "expected 2 columns"]
    else:
        argv[3] = "no-such-dataset-here"
        needles = ["no-such-dataset-here"]
    rc = main(_rerank_cli(*argv))
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, *needles)
    assert not (tmp_path / "run.trec").exists()
