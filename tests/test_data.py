"""Tests for smec_dist.data: BEIR and STS loading, anchor selection, downloads (no network)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zipfile
from pathlib import Path

import pytest

from smec_dist.data import download as download_mod
from smec_dist.data import (
    StsPair,
    doc_text,
    download_beir,
    ensure_dataset,
    eval_qrels,
    is_beir_folder,
    load_beir,
    load_query_file,
    load_sts,
    load_sts_dir,
    select_anchor_queries,
    validation_queries,
)
from smec_dist.errors import SmecError

# --------------------------------------------------------------------------- helpers

CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "first doc"},
    {"_id": "d2", "title": "", "text": "second doc"},
    {"_id": "d3", "text": "third doc, no title"},
]
QUERIES = [
    {"_id": "q1", "text": "query one", "metadata": {}},
    {"_id": "q2", "text": "query two"},
    {"_id": "q3", "text": "query three"},
]
QRELS = {
    "train": [("q1", "d1", 1)],
    "test": [("q2", "d2", 1), ("q3", "d3", 2), ("q3", "d1", 0)],
}


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_beir(root: Path) -> Path:
    """Writes a small valid BEIR folder and returns it."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(_jsonl(CORPUS), encoding="utf-8")
    (root / "queries.jsonl").write_text(_jsonl(QUERIES), encoding="utf-8")
    for split, rows in QRELS.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def assert_error(exc: pytest.ExceptionInfo, *parts: str) -> None:
    """The message is one line and names every part (file name, line number, key...)."""
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    return make_beir(tmp_path / "mini")


@pytest.fixture(scope="module")
def scifact(data_dir: Path):
    return load_beir(data_dir / "scifact")


# --------------------------------------------------------------------------- shared data


def test_scifact_counts(data_dir: Path) -> None:
    start = time.perf_counter()
    ds = load_beir(data_dir / "scifact")
    assert time.perf_counter() - start < 2.0
    assert ds.name == "scifact"
    assert len(ds.corpus) == 5183
    assert len(ds.queries) == 1109
    assert ds.splits == ["test", "train"]
    assert len(ds.qrels["train"]) == 809
    assert sum(map(len, ds.qrels["train"].values())) == 919
    assert len(ds.qrels["test"]) == 300
    assert sum(map(len, ds.qrels["test"].values())) == 339
    assert all(isinstance(s, int) for q in ds.qrels["test"].values() for s in q.values())


def test_scifact_order_and_texts(scifact) -> None:
    first_line = json.loads((scifact.root / "corpus.jsonl").open(encoding="utf-8").readline())
    ids = scifact.doc_ids()
    assert ids[0] == first_line["_id"]
    texts = scifact.doc_texts()
    assert len(texts) == len(ids)
    assert texts[0] == (first_line["title"] + " " + first_line["text"]).strip()
    assert list(scifact.queries)[:3] == ["0", "1", "2"]


def test_load_selected_splits(data_dir: Path) -> None:
    ds = load_beir(data_dir / "scifact", splits=["test"])
    assert list(ds.qrels) == ["test"]
    with pytest.raises(SmecError) as exc:
        load_beir(data_dir / "scifact", splits=["dev"])
    assert_error(exc, "'dev'", "test, train")


def test_cranfield_empty_docs(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.beir"):
        ds = load_beir(data_dir / "cranfield")
    assert len(ds.corpus) == 1400
    assert len(ds.queries) == 225
    assert ds.splits == ["test"]
    assert sum(map(len, ds.qrels["test"].values())) == 1612
    empty = [d for d, doc in ds.corpus.items() if not doc_text(doc)]
    assert len(empty) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "empty" in r.getMessage()]
    assert len(warnings) == 1
    assert "2 document" in warnings[0].getMessage()


# --------------------------------------------------------------------------- small valid folder


def test_mini_loads(mini: Path) -> None:
    ds = load_beir(mini)
    assert ds.doc_ids() == ["d1", "d2", "d3"]
    assert ds.corpus["d3"] == {"title": "", "text": "third doc, no title"}
    assert ds.doc_texts() == ["Alpha first doc", "second doc", "third doc, no title"]
    assert ds.queries == {"q1": "query one", "q2": "query two", "q3": "query three"}
    assert ds.qrels["test"] == {"q2": {"d2": 1}, "q3": {"d3": 2, "d1": 0}}


def test_blank_lines_crlf_and_bom_are_fine(mini: Path) -> None:
    text = "\ufeff" + _jsonl(CORPUS[:1]) + "\n   \n" + _jsonl(CORPUS[1:]).replace("\n", "\r\n")
    (mini / "corpus.jsonl").write_text(text, encoding="utf-8")
    ds = load_beir(mini)
    assert ds.doc_ids() == ["d1", "d2", "d3"]


def test_doc_text() -> None:
    assert doc_text({"title": " T ", "text": "body "}) == "T  body"
    assert doc_text({"title": "", "text": ""}) == ""


# --------------------------------------------------------------------------- bad BEIR input


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


CORPUS_LINES = [json.dumps(r) for r in CORPUS]
QUERY_LINES = [json.dumps(r) for r in QUERIES]

# (file to overwrite, its lines, fragments the message must contain)
BAD_JSONL = {
    "malformed_json": ("corpus.jsonl", [CORPUS_LINES[0], '{"_id": "d2" "text": "x"}'], ["corpus.jsonl:2:", "malformed JSON"]),
    "not_object": ("corpus.jsonl", [CORPUS_LINES[0], CORPUS_LINES[1], '["d3", "x"]'], ["corpus.jsonl:3:", "JSON object"]),
    "missing_id": ("queries.jsonl", [QUERY_LINES[0], '{"text": "no id"}'], ["queries.jsonl:2:", "_id"]),
    "int_id": ("corpus.jsonl", ['{"_id": 5, "text": "x"}'], ["corpus.jsonl:1:", "_id", "string"]),
    "empty_id": ("queries.jsonl", [QUERY_LINES[0], QUERY_LINES[1], '{"_id": "", "text": "x"}'], ["queries.jsonl:3:", "_id"]),
    "duplicate_doc": (
        "corpus.jsonl",
        [CORPUS_LINES[0], CORPUS_LINES[1], CORPUS_LINES[2], "", json.dumps({"_id": "d1", "text": "again"})],
        ["corpus.jsonl:5:", "line 1", "d1"],
    ),
    "duplicate_query": ("queries.jsonl", [QUERY_LINES[0], QUERY_LINES[1], QUERY_LINES[1], QUERY_LINES[2]], ["queries.jsonl:3:", "line 2", "q2"]),
    "missing_text": ("corpus.jsonl", [CORPUS_LINES[0], '{"_id": "d2", "title": "t"}'], ["corpus.jsonl:2:", "'text'"]),
    "non_string_text": ("queries.jsonl", ['{"_id": "q1", "text": 3}'], ["queries.jsonl:1:", "'text'"]),
    "empty_corpus": ("corpus.jsonl", ["", "  "], ["corpus.jsonl", "no documents"]),
    "empty_queries": ("queries.jsonl", [""], ["queries.jsonl", "no queries"]),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_bad_jsonl(mini: Path, case: str) -> None:
    name, lines, parts = BAD_JSONL[case]
    _write_lines(mini / name, lines)
    with pytest.raises(SmecError) as exc:
        load_beir(mini)
    assert_error(exc, *parts)


BAD_QRELS = {
    "header": (["query-id\tdoc-id\tscore", "q1\td1\t1"], ["train.tsv:1:", "header"]),
    "no_header": (["q1\td1\t1"], ["train.tsv:1:", "header"]),
    "columns": (["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2"], ["train.tsv:3:", "3 tab-separated columns", "got 2"]),
    "extra_column": (["query-id\tcorpus-id\tscore", "q1\td1\t1\tx"], ["train.tsv:2:", "got 4"]),
    "score": (["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\t0.5"], ["train.tsv:3:", "'0.5'", "integer"]),
    # judgments naming absent ids are skipped (test_conventions); an error only when none is left
    "only_unknown_query": (["query-id\tcorpus-id\tscore", "", "q9\td1\t1"],
                           ["train.tsv", "no judgment left", "line 3, 'q9'", "queries.jsonl"]),
    "only_unknown_doc": (["query-id\tcorpus-id\tscore", "q1\tzz\t1"],
                         ["train.tsv", "no judgment left", "line 2, 'zz'", "corpus.jsonl"]),
    "header_only": (["query-id\tcorpus-id\tscore"], ["train.tsv", "no judgment left"]),
}


@pytest.mark.parametrize("case", sorted(BAD_QRELS))
def test_bad_qrels(mini: Path, case: str) -> None:
    lines, parts = BAD_QRELS[case]
    _write_lines(mini / "qrels" / "train.tsv", lines)
    with pytest.raises(SmecError) as exc:
        load_beir(mini)
    assert_error(exc, *parts)


def test_empty_qrels_file(mini: Path) -> None:
    (mini / "qrels" / "train.tsv").write_bytes(b"")
    with pytest.raises(SmecError) as exc:
        load_beir(mini)
    assert_error(exc, "train.tsv", "empty file")


def test_non_utf8(mini: Path) -> None:
    raw = (CORPUS_LINES[0] + "\n").encode() + b'{"_id": "d2", "text": "caf\xe9"}\n'
    (mini / "corpus.jsonl").write_bytes(raw)
    with pytest.raises(SmecError) as exc:
        load_beir(mini)
    assert_error(exc, "corpus.jsonl:2:", "UTF-8")


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl"])
def test_missing_file(mini: Path, missing: str) -> None:
    (mini / missing).unlink()
    with pytest.raises(SmecError) as exc:
        load_beir(mini)
    assert_error(exc, missing, "not found")


def test_missing_folder_and_qrels(tmp_path: Path, mini: Path) -> None:
    with pytest.raises(SmecError) as exc:
        load_beir(tmp_path / "nope")
    assert_error(exc, "nope", "not found")
    for tsv in (mini / "qrels").iterdir():
        tsv.unlink()
    with pytest.raises(SmecError) as exc:
        load_beir(mini)
    assert_error(exc, "qrels", "no <split>.tsv")
    (mini / "qrels").rmdir()
    with pytest.raises(SmecError) as exc:
        load_beir(mini)
    assert_error(exc, "qrels", "not found")


def test_repeated_pair_warns(mini: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_lines(mini / "qrels" / "train.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td1\t2"])
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.beir"):
        ds = load_beir(mini)
    assert ds.qrels["train"] == {"q1": {"d1": 2}}
    assert any("repeated" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- query files


def test_query_file_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(_jsonl([{"_id": "a", "text": "alpha"}, {"_id": "b", "text": "beta"}]) + "\n", encoding="utf-8")
    assert load_query_file(path) == [("a", "alpha"), ("b", "beta")]


def test_query_file_tsv_with_and_without_header(tmp_path: Path) -> None:
    with_header = tmp_path / "h.tsv"
    with_header.write_text("id\ttext\na\talpha\nb\tbeta\n", encoding="utf-8")
    assert load_query_file(with_header) == [("a", "alpha"), ("b", "beta")]
    without = tmp_path / "n.tsv"
    without.write_text("a\talpha\n\nb\tbeta\n", encoding="utf-8")
    assert load_query_file(without) == [("a", "alpha"), ("b", "beta")]


def test_query_file_txt(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("alpha\n\n  beta  \n", encoding="utf-8")
    assert load_query_file(path) == [("line-1", "alpha"), ("line-3", "beta")]


@pytest.mark.parametrize(
    "name, content, parts",
    [
        ("q.tsv", "a\talpha\nb\tbeta\textra\n", ["q.tsv:2:", "2 tab-separated columns"]),
        ("q.tsv", "a\talpha\nb\n", ["q.tsv:2:", "got 1"]),
        ("q.tsv", "a\talpha\nb\tbeta\na\tagain\n", ["q.tsv:3:", "line 1", "'a'"]),
        ("q.tsv", "a\t\n", ["q.tsv:1:", "empty query text"]),
        ("q.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', ["q.jsonl:2:", "line 1"]),
        ("q.jsonl", '{"_id": "a", "text": "x"}\nnot json\n', ["q.jsonl:2:", "malformed JSON"]),
        ("q.txt", "\n\n", ["q.txt", "no queries"]),
        ("q.csv", "a,b\n", ["q.csv", ".jsonl", ".tsv", ".txt"]),
    ],
)
def test_query_file_errors(tmp_path: Path, name: str, content: str, parts: list[str]) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SmecError) as exc:
        load_query_file(path)
    assert_error(exc, *parts)


def test_query_file_missing(tmp_path: Path) -> None:
    with pytest.raises(SmecError) as exc:
        load_query_file(tmp_path / "absent.jsonl")
    assert_error(exc, "absent.jsonl", "not found")


# --------------------------------------------------------------------------- anchors


def test_anchor_split(scifact) -> None:
    texts, ids = select_anchor_queries(scifact, "split:train", "test")
    assert len(ids) == 809
    assert ids == list(scifact.qrels["train"])
    assert texts == [scifact.queries[q] for q in ids]


def test_anchor_split_errors(scifact) -> None:
    with pytest.raises(SmecError) as exc:
        select_anchor_queries(scifact, "split:dev", "test")
    assert_error(exc, "'dev'", "test, train")
    with pytest.raises(SmecError) as exc:
        select_anchor_queries(scifact, "split:test", "test")
    assert_error(exc, "split:test", "holdout")


@pytest.mark.parametrize(
    "name, content, ids",
    [
        ("a.jsonl", '{"_id": "x1", "text": "one"}\n{"_id": "x2", "text": "two"}\n', ["x1", "x2"]),
        ("a.tsv", "qid\tquery\nx1\tone\nx2\ttwo\n", ["x1", "x2"]),
        ("a.txt", "one\ntwo\n", ["line-1", "line-2"]),
    ],
)
def test_anchor_file(scifact, tmp_path: Path, name: str, content: str, ids: list[str]) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    texts, got = select_anchor_queries(scifact, f"file:{path}", "test")
    assert texts == ["one", "two"]
    assert got == ids


def test_anchor_holdout(scifact) -> None:
    texts, ids = select_anchor_queries(scifact, "holdout:0.5", "test", seed=3)
    assert len(ids) == 150 and len(set(ids)) == 150
    assert texts == [scifact.queries[q] for q in ids]
    again = select_anchor_queries(scifact, "holdout:0.5", "test", seed=3)
    assert again == (texts, ids)
    other = select_anchor_queries(scifact, "holdout:0.5", "test", seed=4)[1]
    assert set(other) != set(ids)

    kept = eval_qrels(scifact, "test", ids)
    assert len(kept) == 150
    assert not set(kept) & set(ids)
    assert set(kept) | set(ids) == set(scifact.qrels["test"])
    # The dataset's own qrels are left whole.
    assert len(scifact.qrels["test"]) == 300
    assert eval_qrels(scifact, "test", []) == scifact.qrels["test"]


def test_anchor_holdout_small_fraction_keeps_one(mini: Path) -> None:
    ds = load_beir(mini)
    _, ids = select_anchor_queries(ds, "holdout:0.01", "test")
    assert len(ids) == 1
    assert len(eval_qrels(ds, "test", ids)) == 1


def test_validation_queries(scifact) -> None:
    judged = [q for q, docs in scifact.qrels["train"].items() if any(s > 0 for s in docs.values())]
    ids = validation_queries(scifact, "train", 0.2, seed=0)
    assert len(ids) == round(0.2 * len(judged)) and set(ids) <= set(judged)
    assert ids == [q for q in judged if q in set(ids)]  # qrels order
    assert validation_queries(scifact, "train", 0.2, seed=0) == ids
    assert set(validation_queries(scifact, "train", 0.2, seed=1)) != set(ids)


def test_validation_queries_skip_unjudged_and_need_two(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n{"_id": "q2", "text": "y"}\n'
                                        '{"_id": "q3", "text": "z"}\n')
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\nq3\td2\t1\n")
    ds = load_beir(root)
    assert validation_queries(ds, "train", 0.9) in (["q1"], ["q3"])  # q2 has no positive judgment
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n")
    with pytest.raises(SmecError) as exc:
        validation_queries(load_beir(root), "train", 0.5)
    assert_error(exc, "'train'", "1 judged query", "too few")
    with pytest.raises(SmecError) as exc:
        validation_queries(ds, "dev", 0.5)
    assert_error(exc, "'dev'")


def test_anchor_none(scifact) -> None:
    assert select_anchor_queries(scifact, "none", "test") == ([], [])


@pytest.mark.parametrize("spec", ["bogus", "split:", "file:", "holdout:1.5", "holdout:0", "holdout:abc", "holdout:nan", ""])
def test_anchor_bad_spec(scifact, spec: str) -> None:
    with pytest.raises(SmecError) as exc:
        select_anchor_queries(scifact, spec, "test")
    assert_error(exc, f"'{spec}'")
    if not spec.startswith("holdout:"):
        assert_error(exc, "split:<name>", "file:<path>", "holdout:<fraction", "none")


def test_eval_qrels_errors(scifact) -> None:
    with pytest.raises(SmecError) as exc:
        eval_qrels(scifact, "dev", [])
    assert_error(exc, "'dev'", "test, train")
    with pytest.raises(SmecError) as exc:
        eval_qrels(scifact, "test", list(scifact.qrels["test"]))
    assert_error(exc, "no queries left")


# --------------------------------------------------------------------------- STS


def test_sts_splits(data_dir: Path) -> None:
    test = load_sts_dir(data_dir / "stsb", "test")
    assert len(test) == 1379
    assert len(load_sts_dir(data_dir / "stsb", "dev")) == 1500
    assert len(load_sts(data_dir / "stsb" / "train.tsv")) == 5749
    assert isinstance(test[0], StsPair)
    assert test[0] == StsPair("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)
    assert all(0.0 <= p.score <= 5.0 for p in test)
    # Quotes are plain characters in these files, not CSV quoting.
    assert any('"' in p.s1 or '"' in p.s2 for p in test)


def test_sts_missing_split(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SmecError) as exc:
        load_sts_dir(data_dir / "stsb", "validation")
    assert_error(exc, "'validation'", "dev, test, train")
    with pytest.raises(SmecError) as exc:
        load_sts_dir(tmp_path / "nope", "test")
    assert_error(exc, "nope", "not found")


HEADER = "sentence1\tsentence2\tscore"


@pytest.mark.parametrize(
    "lines, parts",
    [
        ([HEADER, "a\tb\t1.0", "a\tb"], ["s.tsv:3:", "3 tab-separated columns", "got 2"]),
        ([HEADER, "a\tb\t1.0\textra"], ["s.tsv:2:", "got 4"]),
        ([HEADER, "a\tb\tfive"], ["s.tsv:2:", "'five'", "not a number"]),
        ([HEADER, "a\tb\t1", "", "a\tb\t5.5"], ["s.tsv:4:", "outside [0, 5]"]),
        ([HEADER, "a\tb\t-0.1"], ["s.tsv:2:", "outside"]),
        ([HEADER, "a\tb\tnan"], ["s.tsv:2:", "outside"]),
        (["s1\ts2\tscore", "a\tb\t1"], ["s.tsv:1:", "header"]),
        ([HEADER], ["s.tsv", "no sentence pairs"]),
    ],
)
def test_sts_errors(tmp_path: Path, lines: list[str], parts: list[str]) -> None:
    path = tmp_path / "s.tsv"
    _write_lines(path, lines)
    with pytest.raises(SmecError) as exc:
        load_sts(path)
    assert_error(exc, *parts)


def test_sts_empty_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "s.tsv"
    path.write_bytes(b"")
    with pytest.raises(SmecError) as exc:
        load_sts(path)
    assert_error(exc, "s.tsv", "empty file")
    with pytest.raises(SmecError) as exc:
        load_sts(tmp_path / "absent.tsv")
    assert_error(exc, "absent.tsv", "not found")


def test_sts_edge_scores(tmp_path: Path) -> None:
    path = tmp_path / "s.tsv"
    _write_lines(path, [HEADER, 'he said "hi\tshe said "bye"\t0', "x\ty\t5.000"])
    pairs = load_sts(path)
    assert pairs == [StsPair('he said "hi', 'she said "bye"', 0.0), StsPair("x", "y", 5.0)]
    assert not any(math.isnan(p.score) for p in pairs)


# --------------------------------------------------------------------------- downloads


def make_zip(tmp_path: Path, name: str = "toy", top_folder: bool = True) -> tuple[Path, str]:
    """Zips a small BEIR dataset; returns the zip and its md5."""
    src = make_beir(tmp_path / "src" / name)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(src.rglob("*")):
            arcname = file.relative_to(src.parent if top_folder else src)
            zf.write(file, arcname.as_posix())
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args, **_kwargs):
        raise AssertionError("downloaded although the dataset was present")

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", fail)


def test_download_file_url_with_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, md5 = make_zip(tmp_path)
    dest = tmp_path / "datasets"
    got = download_beir("toy", dest, url=archive.as_uri(), md5=md5.upper(), progress=False)
    assert got == dest / "toy"
    assert is_beir_folder(got)
    assert sorted(p.name for p in dest.iterdir()) == ["toy"]  # no temporaries left
    ds = load_beir(got)
    assert ds.doc_ids() == ["d1", "d2", "d3"]

    # Present now: a second call must not touch the network, even with a broken URL.
    _forbid_network(monkeypatch)
    assert download_beir("toy", dest, url="file:///nonexistent/x.zip", progress=False) == got


def test_download_zip_without_top_folder(tmp_path: Path) -> None:
    archive, _ = make_zip(tmp_path, top_folder=False)
    got = download_beir("toy", tmp_path / "d", url=archive.as_uri(), progress=False)
    assert is_beir_folder(got)


def test_download_md5_mismatch(tmp_path: Path) -> None:
    archive, md5 = make_zip(tmp_path)
    dest = tmp_path / "datasets"
    with pytest.raises(SmecError) as exc:
        download_beir("toy", dest, url=archive.as_uri(), md5="0" * 32, progress=False)
    assert_error(exc, archive.as_uri(), "md5 mismatch", "0" * 32, md5)
    assert list(dest.iterdir()) == []


def test_download_bad_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not a zip file at all" * 10)
    dest = tmp_path / "datasets"
    with pytest.raises(SmecError) as exc:
        download_beir("toy", dest, url=bad.as_uri(), progress=False)
    assert_error(exc, bad.as_uri(), "zip")
    assert list(dest.iterdir()) == []


def test_download_zip_without_dataset(tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("toy/readme.txt", "no corpus here")
    dest = tmp_path / "datasets"
    with pytest.raises(SmecError) as exc:
        download_beir("toy", dest, url=archive.as_uri(), progress=False)
    assert_error(exc, "no BEIR dataset")
    assert list(dest.iterdir()) == []


def test_download_missing_url(tmp_path: Path) -> None:
    dest = tmp_path / "datasets"
    url = (tmp_path / "absent.zip").as_uri()
    with pytest.raises(SmecError) as exc:
        download_beir("toy", dest, url=url, progress=False)
    assert_error(exc, url, "download failed")
    assert list(dest.iterdir()) == []


def test_download_refuses_foreign_folder(tmp_path: Path) -> None:
    archive, _ = make_zip(tmp_path)
    dest = tmp_path / "datasets"
    (dest / "toy").mkdir(parents=True)
    (dest / "toy" / "mine.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(SmecError) as exc:
        download_beir("toy", dest, url=archive.as_uri(), progress=False)
    assert_error(exc, "toy", "not a BEIR dataset")
    assert (dest / "toy" / "mine.txt").read_text(encoding="utf-8") == "keep me"


def test_download_bad_name(tmp_path: Path) -> None:
    with pytest.raises(SmecError) as exc:
        download_beir("../evil", tmp_path, url="file:///x.zip", progress=False)
    assert_error(exc, "'../evil'")


def test_ensure_dataset(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An existing folder, given as a path or found by name in data_dir.
    assert ensure_dataset(data_dir / "scifact", tmp_path) == data_dir / "scifact"
    assert ensure_dataset("scifact", data_dir) == data_dir / "scifact"

    archive, _ = make_zip(tmp_path)
    dest = tmp_path / "datasets"
    monkeypatch.setattr(download_mod, "BEIR_URL", tmp_path.as_uri() + "/{name}.zip")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SmecError) as exc:
        ensure_dataset("toy", dest)
    assert_error(exc, "'toy'", str(dest), "downloads are off")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("SMEC_OFFLINE", "1")
    with pytest.raises(SmecError):
        ensure_dataset("toy", dest)

    monkeypatch.setenv("SMEC_OFFLINE", "0")
    got = ensure_dataset("toy", dest)
    assert got == dest / "toy" and is_beir_folder(got)
    assert archive.exists()

    _forbid_network(monkeypatch)
    assert ensure_dataset("toy", dest) == got


def test_ensure_dataset_path_like_missing(tmp_path: Path) -> None:
    with pytest.raises(SmecError) as exc:
        ensure_dataset(str(tmp_path / "absent" / "folder"), tmp_path)
    assert_error(exc, "absent", "neither an existing folder")


def test_default_url() -> None:
    assert download_mod.BEIR_URL.format(name="scifact").endswith("/BEIR/datasets/scifact.zip")
