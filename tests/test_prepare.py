"""Tests for ``smec prepare msmarco`` (smec_dist.data.msmarco): MS MARCO triplets (no network).

Fixtures are written into tmp_path in the real files' formats: collection.tsv,
queries.train.tsv, qrels.train.tsv and qidpidtriples.train.full.2.tsv (plain and gzipped), and
tar archives shaped like the real downloads.
"""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import pytest

from smec_dist.data import load_beir, msmarco
from smec_dist.data.msmarco import prepare_msmarco
from smec_dist.errors import SmecError
from tests.prepare_helpers import go_online, one_error_line, read_jsonl, run_cli, snapshot, write_lines
from tests.prepare_helpers import offline  # noqa: F401 - the autouse fixture: imported to apply here

TOPICS = ["rivers", "volcanoes", "jazz", "orbits", "bread", "glaciers", "chess", "tides", "bees", "copper"]
N_PASSAGES = 30
QIDS = list(range(1000, 1012))
# qid -> judged positive pids; 1003 has two.
POSITIVES = {q: [i] for i, q in enumerate(QIDS)}
POSITIVES[1003] = [3, 20]
TRIPLETS_FIELDS = {"query_id", "query", "positive_id", "positive", "negative_ids", "negatives"}


# --------------------------------------------------------------------------- MS MARCO fixtures


def _passage(pid: int) -> str:
    topic = TOPICS[pid % len(TOPICS)]
    return f"Passage {pid} explains {topic}: how {topic} form, change and matter to people, in plain words."


def msmarco_source(root: Path, triples: bool = True, bad: bool = False) -> Path:
    """Writes the MS MARCO passage files (real names and layouts) and returns the folder."""
    collection = [f"{pid}\t{_passage(pid)}" for pid in range(N_PASSAGES)]
    queries = [f"{q}\twhat do {TOPICS[i % len(TOPICS)]} have to do with item {i}" for i, q in enumerate(QIDS)]
    qrels = [f"{q}\t0\t{p}\t1" for q in QIDS for p in POSITIVES[q]]
    if bad:
        collection += ["abc\tnot an integer id", "31", "32\t   ", f"5\t{_passage(7)}", b"33\t\xff\xfe broken"]
        queries += ["1000\tthe same qid again", "q9\tnon-integer qid"]
        qrels += ["1000\t0\t999\t1", "9999\t0\t1\t1", "1001\t0\t1", "1001\t0\t1\t1"]
    write_lines(root / "collection.tsv", collection)
    write_lines(root / "queries.train.tsv", queries)
    write_lines(root / "qrels.train.tsv", qrels)
    if triples:
        rows = []
        for i, q in enumerate(QIDS):
            for j in range(6):
                rows.append(f"{q}\t{POSITIVES[q][0]}\t{(i + 12 + j) % N_PASSAGES}")
        rows.append("1003\t3\t20")  # a judged positive offered as a negative: must be dropped
        write_lines(root / "qidpidtriples.train.full.2.tsv", rows)
    return root


def _judged(q: str) -> set[str]:
    return {str(p) for p in POSITIVES[int(q)]}


# --------------------------------------------------------------------------- MS MARCO


def test_msmarco_outputs_load_as_beir(tmp_path: Path) -> None:
    src = msmarco_source(tmp_path / "src")
    out = tmp_path / "marco"
    summary = prepare_msmarco(out, src, dev_fraction=0.25, negatives_per_query=3, progress=False)
    assert summary["output"] == str(out)
    assert {p.name for p in out.iterdir()} == {"corpus.jsonl", "queries.jsonl", "qrels", "triplets", "prepare.json"}
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporaries

    ds = load_beir(out)
    assert ds.splits == ["dev", "train"]
    assert len(ds.qrels["train"]) == 9 and len(ds.qrels["dev"]) == 3
    assert ds.qrels["train"].get("1003", ds.qrels["dev"].get("1003")) == {"3": 1, "20": 1}
    assert all(doc["title"] == "" for doc in ds.corpus.values())

    train = read_jsonl(out / "triplets" / "train.jsonl")
    dev = read_jsonl(out / "triplets" / "dev.jsonl")
    assert len(train) == 9 and len(dev) == 3
    for t in train + dev:
        assert set(t) == TRIPLETS_FIELDS
        assert t["query"] == ds.queries[t["query_id"]]
        assert t["positive_id"] == str(POSITIVES[int(t["query_id"])][0])
        assert t["positive"] == ds.corpus[t["positive_id"]]["text"] == _passage(int(t["positive_id"]))
        assert len(t["negative_ids"]) == 3 == len(set(t["negative_ids"]))
        assert [ds.corpus[n]["text"] for n in t["negative_ids"]] == t["negatives"]
        assert not set(t["negative_ids"]) & _judged(t["query_id"])
        i = QIDS.index(int(t["query_id"]))
        offered = {str((i + 12 + j) % N_PASSAGES) for j in range(6)}
        assert set(t["negative_ids"]) <= offered  # hard negatives from the triples file
    assert {t["query_id"] for t in train}.isdisjoint(t["query_id"] for t in dev)

    report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    assert report["queries"] == {"with_positive": 12, "used": 12, "train": 9, "dev": 3}
    assert report["negatives"]["from_file"] == 36 and report["negatives"]["random"] == 0
    assert report["negatives"]["file"] == "qidpidtriples.train.full.2.tsv"
    # 1003's candidates 15..20 include its second positive 20, and the extra row offers it again.
    assert report["negatives"]["judged_candidates_dropped"] == 2
    assert report["files"]["collection.tsv"]["rows_read"] == 30
    assert report["files"]["qrels.train.tsv"]["rows_kept"] == 13
    assert all(f["bad_rows"] == 0 for f in report["files"].values())
    assert report["passages_written"] == len(ds.corpus)


def test_msmarco_is_deterministic(tmp_path: Path) -> None:
    src = msmarco_source(tmp_path / "src")
    runs = [snapshot(Path(prepare_msmarco(tmp_path / f"o{i}", src, seed=7, progress=False)["output"]))
            for i in range(2)]
    assert runs[0] == runs[1]
    other = snapshot(Path(prepare_msmarco(tmp_path / "o2", src, seed=8, progress=False)["output"]))
    assert other["triplets/train.jsonl"] != runs[0]["triplets/train.jsonl"]


def test_msmarco_limits(tmp_path: Path) -> None:
    src = msmarco_source(tmp_path / "src")
    s = prepare_msmarco(tmp_path / "a", src, max_train_samples=3, dev_fraction=0.25, negatives_per_query=2,
                        progress=False)
    assert s["queries"]["train"] == 3 and s["queries"]["dev"] == 1
    train = read_jsonl(tmp_path / "a" / "triplets" / "train.jsonl")
    assert len(train) == 3 and all(len(t["negatives"]) == 2 for t in train)
    assert len(load_beir(tmp_path / "a").queries) == 4

    s = prepare_msmarco(tmp_path / "b", src, split_ratio=0.5, dev_fraction=0.0, progress=False)
    assert s["queries"] == {"with_positive": 12, "used": 6, "train": 6, "dev": 0}
    assert not (tmp_path / "b" / "qrels" / "dev.tsv").exists()
    assert (tmp_path / "b" / "triplets" / "dev.jsonl").read_text() == ""


def test_msmarco_random_negatives_never_judged(tmp_path: Path) -> None:
    src = msmarco_source(tmp_path / "src", triples=False)
    s = prepare_msmarco(tmp_path / "a", src, negatives_per_query=8, progress=False)
    assert s["negatives"]["file"] is None and s["negatives"]["random"] == 12 * 8
    triplets = read_jsonl(tmp_path / "a" / "triplets" / "train.jsonl") + read_jsonl(tmp_path / "a" / "triplets" / "dev.jsonl")
    for t in triplets:
        assert len(set(t["negative_ids"])) == 8
        assert not set(t["negative_ids"]) & _judged(t["query_id"])
    again = prepare_msmarco(tmp_path / "b", src, negatives_per_query=8, progress=False)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b") and again["negatives"] == s["negatives"]


def test_msmarco_bad_rows_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = msmarco_source(tmp_path / "src", bad=True)
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.files"):
        prepare_msmarco(tmp_path / "out", src, progress=False)
    report = json.loads((tmp_path / "out" / "prepare.json").read_text(encoding="utf-8"))
    files = report["files"]
    assert files["collection.tsv"]["rows_read"] == 35 and files["collection.tsv"]["rows_kept"] == 30
    assert files["collection.tsv"]["bad_by_reason"] == {
        "non-integer id": 1, "wrong column count": 1, "empty text": 1, "duplicate id": 1, "not UTF-8": 1}
    assert [e["line"] for e in files["collection.tsv"]["bad_examples"]] == [31, 32, 33, 34, 35]
    assert files["queries.train.tsv"]["bad_by_reason"] == {"duplicate id": 1, "non-integer id": 1}
    assert files["qrels.train.tsv"]["bad_by_reason"] == {
        "unknown id": 2, "wrong column count": 1, "duplicate judgment": 1}
    assert files["qrels.train.tsv"]["bad_examples"][0] == {"line": 14, "reason": "pid 999 is not in collection.tsv"}

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    collection_warning = next(w for w in warnings if "collection.tsv" in w)
    assert str(src / "collection.tsv") in collection_warning
    assert "skipped 5 bad line(s)" in collection_warning and "line 31" in collection_warning
    assert any(str(src / "qrels.train.tsv") in w and "line 14" in w for w in warnings)
    # The bad rows change nothing else: the same triplets as from the clean files.
    clean = msmarco_source(tmp_path / "clean")
    prepare_msmarco(tmp_path / "out2", clean, progress=False)
    assert snapshot(tmp_path / "out")["triplets/train.jsonl"] == snapshot(tmp_path / "out2")["triplets/train.jsonl"]


def test_msmarco_gzipped_inputs(tmp_path: Path) -> None:
    import gzip

    src = msmarco_source(tmp_path / "src")
    plain = snapshot(Path(prepare_msmarco(tmp_path / "a", src, progress=False)["output"]))
    for name in ("collection.tsv", "qidpidtriples.train.full.2.tsv"):
        path = src / name
        (src / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    zipped = snapshot(Path(prepare_msmarco(tmp_path / "b", src, progress=False)["output"]))
    plain.pop("prepare.json"), zipped.pop("prepare.json")
    assert plain == zipped


def test_msmarco_fatal_errors_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(tmp_path / "absent")])
    one_error_line(rc, err, str(tmp_path / "absent"), "not found")

    src = msmarco_source(tmp_path / "src")
    (src / "qrels.train.tsv").unlink()
    rc, _, err = run_cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(src)])
    one_error_line(rc, err, str(src / "qrels.train.tsv"), "file not found")

    write_lines(src / "qrels.train.tsv", ["1000\t0\t999\t1"])  # names no known passage
    rc, _, err = run_cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(src)])
    one_error_line(rc, err, str(src / "qrels.train.tsv"), "no query has a positive judgment")

    rc, _, err = run_cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(src), "--split-ratio", "2"])
    one_error_line(rc, err, "split_ratio")

    msmarco_source(src)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep", encoding="utf-8")
    rc, _, err = run_cli(capsys, ["prepare", "msmarco", "--output", str(tmp_path / "taken"), "--source", str(src)])
    one_error_line(rc, err, str(tmp_path / "taken"), "not an empty folder")
    assert (tmp_path / "taken" / "mine.txt").read_text(encoding="utf-8") == "keep"

    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "taken"]  # nothing half-written


def test_msmarco_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = msmarco_source(tmp_path / "src")
    rc, out, err = run_cli(capsys, ["prepare", "msmarco", "--output", str(tmp_path / "o"), "--source", str(src),
                                 "--max-train-samples", "4", "--negatives", "2", "--dev-fraction", "0.2"])
    assert rc == 0, err
    assert out.startswith(f"{tmp_path / 'o'}: 4 train and 1 dev queries")
    assert "10 from qidpidtriples.train.full.2.tsv" in out  # 5 queries x 2


def test_msmarco_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = msmarco_source(tmp_path / "src")

    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(msmarco, "write_jsonl", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_msmarco(tmp_path / "out", src, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def _tar(path: Path, members: dict[str, bytes]) -> None:
    import io

    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_msmarco_download_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = msmarco_source(tmp_path / "src", triples=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    # Shaped like the real archives: collection.tsv alone; the three query files together.
    _tar(mirror / "collection.tar.gz", {"collection.tsv": (src / "collection.tsv").read_bytes()})
    _tar(mirror / "queries.tar.gz", {"queries.dev.tsv": b"1\tdev query\n",
                                     "queries.train.tsv": (src / "queries.train.tsv").read_bytes(),
                                     "queries.eval.tsv": b"2\teval query\n"})
    (mirror / "qrels.train.tsv").write_bytes((src / "qrels.train.tsv").read_bytes())

    out = tmp_path / "dl" / "marco"
    with pytest.raises(SmecError, match="downloads are off"):
        prepare_msmarco(out, download=True, base_url=mirror.as_uri(), progress=False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("SMEC_OFFLINE", "1")
    with pytest.raises(SmecError, match="downloads are off"):
        prepare_msmarco(out, download=True, base_url=mirror.as_uri(), progress=False)
    assert not out.parent.exists()

    go_online(monkeypatch)
    s = prepare_msmarco(out, download=True, base_url=mirror.as_uri(), progress=False)
    assert s["source"] == mirror.as_uri() + "/"
    assert s["files"]["collection.tsv"]["path"] == mirror.as_uri() + "/collection.tar.gz (collection.tsv)"
    assert s["files"]["qrels.train.tsv"]["path"] == mirror.as_uri() + "/qrels.train.tsv"
    assert sorted(p.name for p in out.parent.iterdir()) == ["marco"]
    assert not (out / ".download").exists()
    local = prepare_msmarco(tmp_path / "local", src, progress=False)
    assert snapshot(out)["triplets/train.jsonl"] == snapshot(tmp_path / "local")["triplets/train.jsonl"]
    assert s["queries"] == local["queries"]

    (mirror / "queries.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(SmecError, match="not a valid tar archive"):
        prepare_msmarco(tmp_path / "dl2", download=True, base_url=mirror.as_uri(), progress=False)
    (mirror / "qrels.train.tsv").unlink()
    _tar(mirror / "queries.tar.gz", {"queries.dev.tsv": b"1\tq\n"})
    with pytest.raises(SmecError, match="holds no queries.train.tsv"):
        prepare_msmarco(tmp_path / "dl2", download=True, base_url=mirror.as_uri(), progress=False)
    assert not (tmp_path / "dl2").exists()
    assert msmarco.MSMARCO_BASE_URL.startswith("https://msmarco.z22.web.core.windows.net/msmarcoranking/")


def test_msmarco_download_refused_offline_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = run_cli(capsys, ["prepare", "msmarco", "--output", str(tmp_path / "o"), "--download"])
    one_error_line(rc, err, "downloads are off", "HF_HUB_OFFLINE")
    assert list(tmp_path.iterdir()) == []
