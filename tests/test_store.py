"""The SQLite passage store (smec_dist.data.store): round trip, order, errors, atomic builds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from smec_dist.cli import main
from smec_dist.data.beir import doc_text, load_corpus
from smec_dist.data.store import PassageStore
from smec_dist.data.toy import make_toy_dataset
from smec_dist.errors import SmecError
from tests.test_cli import assert_one_error_line

DOCS = [
    {"_id": "d3", "title": "Third", "text": "comes first in the file"},
    {"_id": "d1", "text": "no title here"},
    {"_id": "d2", "title": "  Padded ", "text": " text \u2028 with a line separator "},
    {"_id": "d10", "title": "", "text": ""},
    {"_id": "d4", "title": "Four", "text": "last"},
]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path) -> Path:
    lines = [json.dumps(d) for d in DOCS]
    return _jsonl(tmp_path / "corpus.jsonl", lines[:2] + [""] + lines[2:])  # a blank line is skipped


def test_round_trip_keeps_order_and_texts(corpus, tmp_path):
    with PassageStore.build(tmp_path / "c.sqlite", corpus, batch=2) as store:
        assert len(store) == 5
        ids = [d["_id"] for d in DOCS]
        assert store.ids() == ids
        assert store.get(["d4", "d3", "d4"]) == [
            ("Four", "last"), ("Third", "comes first in the file"), ("Four", "last")]
        assert store.get(["d1"]) == [("", "no title here")]
        expected = {i: doc_text(d) for i, d in load_corpus(corpus).items()}
        assert store.texts(ids) == [expected[i] for i in ids]
        batches = list(store.iter_batches(2))
        assert [len(b[0]) for b in batches] == [2, 2, 1]
        assert [i for b, _ in batches for i in b] == ids
        assert [t for _, b in batches for t in b] == [expected[i] for i in ids]
        assert store.missing(["d1", "x", "d2", "y", "x"]) == ["x", "y"]
        assert "d2" in store and "zz" not in store
        assert store.get([]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sqlite", "corpus.jsonl"]  # no journal or temp files


def test_many_ids_in_one_get(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", n_docs=2000, n_queries=2, n_topics=16)
    with PassageStore.build(tmp_path / "toy.sqlite", root / "corpus.jsonl") as store:
        ids = store.ids()[::-1]  # more ids than SQLite takes parameters at once
        corpus = load_corpus(root / "corpus.jsonl")
        assert store.texts(ids) == [doc_text(corpus[i]) for i in ids]


def test_read_only_and_closed(corpus, tmp_path):
    store = PassageStore.build(tmp_path / "c.sqlite", corpus)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._conn.execute("DELETE FROM passages")
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.get(["d1"])
    with PassageStore(tmp_path / "c.sqlite") as again:  # reopened from disk
        assert len(again) == 5


def test_unknown_id(corpus, tmp_path):
    with PassageStore.build(tmp_path / "c.sqlite", corpus) as store:
        with pytest.raises(SmecError, match=r"unknown passage id 'nope'"):
            store.get(["d1", "nope"])
        with pytest.raises(SmecError, match="nope"):
            store.texts(["nope"])


@pytest.mark.parametrize("lines, batch, needle", [
    (['{"_id": "a", "text": "x"}', '{"_id": "b", "text": '], 10, ":2: malformed JSON"),
    (['{"_id": "a", "text": "x"}', '{"text": "y"}'], 10, ":2: missing '_id'"),
    (['{"_id": "a", "text": "x"}', '{"_id": "b"}'], 10, ":2: missing 'text'"),
    (['{"_id": "a", "text": "x"}', '[1]'], 10, ":2: expected a JSON object"),
    (['{"_id": "a", "text": "x"}', '{"_id": "b", "text": "y"}', '{"_id": "a", "text": "z"}'], 10,
     ":3: duplicate id 'a' (first at line 1)"),
    (['{"_id": "a", "text": "x"}', '{"_id": "b", "text": "y"}', '', '{"_id": "a", "text": "z"}'], 1,
     ":4: duplicate id 'a' (first at line 1)"),  # across insert batches
    ([], 10, "no documents"),
])
def test_bad_corpus(tmp_path, lines, batch, needle):
    path = _jsonl(tmp_path / "corpus.jsonl", lines)
    with pytest.raises(SmecError) as info:
        PassageStore.build(tmp_path / "c.sqlite", path, batch=batch)
    assert needle in str(info.value) and str(path) in str(info.value), str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # nothing half-built left


def test_failed_rebuild_keeps_the_old_store(corpus, tmp_path):
    PassageStore.build(tmp_path / "c.sqlite", corpus).close()
    bad = _jsonl(tmp_path / "bad.jsonl", ['{"_id": "a", "text": "x"}', "{"])
    with pytest.raises(SmecError, match=":2: malformed JSON"):
        PassageStore.build(tmp_path / "c.sqlite", bad)
    with PassageStore(tmp_path / "c.sqlite") as store:
        assert len(store) == 5


def test_not_a_store(tmp_path):
    with pytest.raises(SmecError, match="passage store not found"):
        PassageStore(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(SmecError, match="not a passage store"):
        PassageStore(tmp_path / "junk.sqlite")
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(SmecError, match="not a passage store"):
        PassageStore(tmp_path / "other.sqlite")
    with pytest.raises(SmecError, match="output folder"):
        PassageStore.build(tmp_path / "no" / "c.sqlite", tmp_path / "corpus.jsonl")


def test_cli_build(corpus, tmp_path, capsys):
    assert main(["store", "build", "--corpus", str(corpus), "--output", str(tmp_path / "c.sqlite")]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'c.sqlite'}: 5 passages"


def test_cli_bad_corpus_one_line(tmp_path, capsys):
    path = _jsonl(tmp_path / "corpus.jsonl", ['{"_id": "a", "text": "x"}', '{"_id": "a", "text": "y"}'])
    rc = main(["store", "build", "--corpus", str(path), "--output", str(tmp_path / "c.sqlite")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, f"{path}:2", "duplicate id 'a'")
    assert not (tmp_path / "c.sqlite").exists()
