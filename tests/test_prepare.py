"""Tests for smec_dist.data.prepare: MS MARCO triplets and Wikipedia passages (no network).

Fixtures are written into tmp_path in the real files' formats: MS MARCO's collection.tsv,
queries.train.tsv, qrels.train.tsv and qidpidtriples.train.full.2.tsv; a wikimedia/wikipedia
parquet shard; JSONL; and a MediaWiki pages-articles XML dump, plain and bz2.
"""

from __future__ import annotations

import bz2
import json
import logging
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smec_dist.cli import main
from smec_dist.data import load_beir
from smec_dist.data import prepare as prep
from smec_dist.data.prepare import clean_wikitext, prepare_msmarco, prepare_wikipedia, split_passages
from smec_dist.errors import SmecError

TOPICS = ["rivers", "volcanoes", "jazz", "orbits", "bread", "glaciers", "chess", "tides", "bees", "copper"]
N_PASSAGES = 30
QIDS = list(range(1000, 1012))
# qid -> judged positive pids; 1003 has two.
POSITIVES = {q: [i] for i, q in enumerate(QIDS)}
POSITIVES[1003] = [3, 20]
TRIPLETS_FIELDS = {"query_id", "query", "positive_id", "positive", "negative_ids", "negatives"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest sets HF_HUB_OFFLINE=1; the download tests unset it themselves.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SMEC_OFFLINE", raising=False)


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SMEC_OFFLINE", raising=False)


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smec: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


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
    _write(root / "collection.tsv", collection)
    _write(root / "queries.train.tsv", queries)
    _write(root / "qrels.train.tsv", qrels)
    if triples:
        rows = []
        for i, q in enumerate(QIDS):
            for j in range(6):
                rows.append(f"{q}\t{POSITIVES[q][0]}\t{(i + 12 + j) % N_PASSAGES}")
        rows.append("1003\t3\t20")  # a judged positive offered as a negative: must be dropped
        _write(root / "qidpidtriples.train.full.2.tsv", rows)
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

    train = _jsonl(out / "triplets" / "train.jsonl")
    dev = _jsonl(out / "triplets" / "dev.jsonl")
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
    runs = [_snapshot(Path(prepare_msmarco(tmp_path / f"o{i}", src, seed=7, progress=False)["output"]))
            for i in range(2)]
    assert runs[0] == runs[1]
    other = _snapshot(Path(prepare_msmarco(tmp_path / "o2", src, seed=8, progress=False)["output"]))
    assert other["triplets/train.jsonl"] != runs[0]["triplets/train.jsonl"]


def test_msmarco_limits(tmp_path: Path) -> None:
    src = msmarco_source(tmp_path / "src")
    s = prepare_msmarco(tmp_path / "a", src, max_train_samples=3, dev_fraction=0.25, negatives_per_query=2,
                        progress=False)
    assert s["queries"]["train"] == 3 and s["queries"]["dev"] == 1
    train = _jsonl(tmp_path / "a" / "triplets" / "train.jsonl")
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
    triplets = _jsonl(tmp_path / "a" / "triplets" / "train.jsonl") + _jsonl(tmp_path / "a" / "triplets" / "dev.jsonl")
    for t in triplets:
        assert len(set(t["negative_ids"])) == 8
        assert not set(t["negative_ids"]) & _judged(t["query_id"])
    again = prepare_msmarco(tmp_path / "b", src, negatives_per_query=8, progress=False)
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b") and again["negatives"] == s["negatives"]


def test_msmarco_bad_rows_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = msmarco_source(tmp_path / "src", bad=True)
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.prepare"):
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
    assert _snapshot(tmp_path / "out")["triplets/train.jsonl"] == _snapshot(tmp_path / "out2")["triplets/train.jsonl"]


def test_msmarco_gzipped_inputs(tmp_path: Path) -> None:
    import gzip

    src = msmarco_source(tmp_path / "src")
    plain = _snapshot(Path(prepare_msmarco(tmp_path / "a", src, progress=False)["output"]))
    for name in ("collection.tsv", "qidpidtriples.train.full.2.tsv"):
        path = src / name
        (src / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    zipped = _snapshot(Path(prepare_msmarco(tmp_path / "b", src, progress=False)["output"]))
    plain.pop("prepare.json"), zipped.pop("prepare.json")
    assert plain == zipped


def test_msmarco_fatal_errors_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(tmp_path / "absent")])
    _one_error_line(rc, err, str(tmp_path / "absent"), "not found")

    src = msmarco_source(tmp_path / "src")
    (src / "qrels.train.tsv").unlink()
    rc, _, err = _cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(src)])
    _one_error_line(rc, err, str(src / "qrels.train.tsv"), "file not found")

    _write(src / "qrels.train.tsv", ["1000\t0\t999\t1"])  # names no known passage
    rc, _, err = _cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(src)])
    _one_error_line(rc, err, str(src / "qrels.train.tsv"), "no query has a positive judgment")

    rc, _, err = _cli(capsys, ["prepare", "msmarco", "--output", str(out), "--source", str(src), "--split-ratio", "2"])
    _one_error_line(rc, err, "split_ratio")

    msmarco_source(src)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep", encoding="utf-8")
    rc, _, err = _cli(capsys, ["prepare", "msmarco", "--output", str(tmp_path / "taken"), "--source", str(src)])
    _one_error_line(rc, err, str(tmp_path / "taken"), "not an empty folder")
    assert (tmp_path / "taken" / "mine.txt").read_text(encoding="utf-8") == "keep"

    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "taken"]  # nothing half-written


def test_msmarco_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = msmarco_source(tmp_path / "src")
    rc, out, err = _cli(capsys, ["prepare", "msmarco", "--output", str(tmp_path / "o"), "--source", str(src),
                                 "--max-train-samples", "4", "--negatives", "2", "--dev-fraction", "0.2"])
    assert rc == 0, err
    assert out.startswith(f"{tmp_path / 'o'}: 4 train and 1 dev queries")
    assert "10 from qidpidtriples.train.full.2.tsv" in out  # 5 queries x 2


def test_msmarco_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = msmarco_source(tmp_path / "src")

    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_write_jsonl", boom)
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

    _online(monkeypatch)
    s = prepare_msmarco(out, download=True, base_url=mirror.as_uri(), progress=False)
    assert s["source"] == mirror.as_uri() + "/"
    assert s["files"]["collection.tsv"]["path"] == mirror.as_uri() + "/collection.tar.gz (collection.tsv)"
    assert s["files"]["qrels.train.tsv"]["path"] == mirror.as_uri() + "/qrels.train.tsv"
    assert sorted(p.name for p in out.parent.iterdir()) == ["marco"]
    assert not (out / ".download").exists()
    local = prepare_msmarco(tmp_path / "local", src, progress=False)
    assert _snapshot(out)["triplets/train.jsonl"] == _snapshot(tmp_path / "local")["triplets/train.jsonl"]
    assert s["queries"] == local["queries"]

    (mirror / "queries.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(SmecError, match="not a valid tar archive"):
        prepare_msmarco(tmp_path / "dl2", download=True, base_url=mirror.as_uri(), progress=False)
    (mirror / "qrels.train.tsv").unlink()
    _tar(mirror / "queries.tar.gz", {"queries.dev.tsv": b"1\tq\n"})
    with pytest.raises(SmecError, match="holds no queries.train.tsv"):
        prepare_msmarco(tmp_path / "dl2", download=True, base_url=mirror.as_uri(), progress=False)
    assert not (tmp_path / "dl2").exists()
    assert prep.MSMARCO_BASE_URL.startswith("https://msmarco.z22.web.core.windows.net/msmarcoranking/")


def test_msmarco_download_refused_offline_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = _cli(capsys, ["prepare", "msmarco", "--output", str(tmp_path / "o"), "--download"])
    _one_error_line(rc, err, "downloads are off", "HF_HUB_OFFLINE")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- Wikipedia fixtures


def _article_text(article_id: str, paragraphs: int = 3, sentences: int = 6) -> str:
    """Plain text shaped like wikimedia/wikipedia: paragraphs, heading lines, a References section."""
    blocks = []
    for p in range(paragraphs):
        blocks.append(" ".join(f"Sentence {p}.{s} of article {article_id} tells a little more about its subject."
                               for s in range(sentences)))
        blocks.append(f"Section {p + 1}")
    blocks += ["References", "Smith, J. (2001). A book. Publisher."]
    return "\n\n".join(blocks)


WIKI_ROWS = [
    {"id": "12", "url": "https://en.wikipedia.org/wiki?curid=12", "title": "Anarchism", "text": _article_text("12")},
    {"id": "25", "url": "u", "title": "Mercury",
     "text": "Mercury may refer to:\n\nMercury (planet)\nMercury (element)"},
    {"id": "30", "url": "u", "title": "Stub", "text": "Too short to keep."},
    {"id": "39", "url": "u", "title": "Albedo", "text": _article_text("39", paragraphs=2)},
    {"id": None, "url": "u", "title": "No id", "text": "text"},
    {"id": "41", "url": "u", "title": "No text", "text": None},
    {"id": "12", "url": "u", "title": "Anarchism again", "text": _article_text("99")},
    {"id": "290", "url": "u", "title": "A", "text": _article_text("290", paragraphs=4)},
]


def wiki_parquet(path: Path, rows: list[dict] = WIKI_ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: pa.array([r[c] for r in rows], type=pa.string()) for c in ("id", "url", "title", "text")})
    pq.write_table(table, path)
    return path


WIKITEXT = """{{Short description|Astronomical body}}
{{Infobox planet
| name = Vulcan
| image = [[File:Vulcan.png|200px]]
}}
'''Vulcan''' is a [[hypothetical planet|hypothesised]] planet<ref name="a">{{cite book|title=X}}</ref> once thought
to orbit between [[Mercury (planet)|Mercury]] and the [[Sun]].<ref>Le Verrier, 1859.</ref> It was proposed by
[[Urbain Le Verrier]] in {{circa}} 1859 ({{lang|fr|planète Vulcain}}) to explain [[perihelion]] shifts of about
{{convert|43|arcseconds}} per century, see [https://example.org the archive] for details.<!-- a hidden note -->

[[File:Orbit diagram.png|thumb|An orbit with a [[link]] in the caption]]
== Observations ==
Several astronomers reported transits of the body across the Sun during the following decades, but none
of the sightings could be confirmed by later observers &amp; the search was finally abandoned.
{| class="wikitable"
|-
! Year !! Observer
|-
| 1859 || Lescarbault
|}
* A list item that is dropped
Einstein's theory of general relativity later explained the anomaly without any extra planet at all.

== References ==
{{Reflist}}
* Some reference
[[Category:Hypothetical planets]]
"""


def _page(title: str, page_id: int, text: str, ns: int = 0, redirect: str | None = None) -> str:
    red = f'<redirect title="{redirect}" />' if redirect else ""
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id>{red}<revision><id>{page_id * 10}</id>"
            f"<timestamp>2023-11-01T00:00:00Z</timestamp><model>wikitext</model><format>text/x-wiki</format>"
            f'<text bytes="{len(text)}" xml:space="preserve">{esc}</text></revision></page>')


def wiki_xml(path: Path) -> Path:
    pages = [
        _page("Vulcan (hypothetical planet)", 100, WIKITEXT),
        _page("Vulcano", 101, "#REDIRECT [[Vulcan (hypothetical planet)]]", redirect="Vulcan (hypothetical planet)"),
        _page("Talk:Vulcan", 102, WIKITEXT, ns=1),
        _page("Vulcan", 103, "'''Vulcan''' may refer to:\n* [[Vulcan (mythology)]]\n{{disambiguation}}"),
    ]
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">'
           "<siteinfo><sitename>Wikipedia</sitename></siteinfo>\n" + "\n".join(pages) + "\n</mediawiki>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = xml.encode("utf-8")
    path.write_bytes(bz2.compress(data) if path.suffix == ".bz2" else data)
    return path


# --------------------------------------------------------------------------- Wikipedia


def test_wikipedia_parquet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shard = wiki_parquet(tmp_path / "train-00000-of-00001.parquet")
    out = tmp_path / "wiki"
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.prepare"):
        s = prepare_wikipedia(out, shard, num_passages=None, min_words=20, max_words=60, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "pairs.jsonl", "prepare.json"]
    corpus = _jsonl(out / "corpus.jsonl")
    assert {d["_id"].rsplit("-", 1)[0] for d in corpus} == {"12", "39", "290"}
    assert [d["_id"] for d in corpus if d["_id"].startswith("12-")][:2] == ["12-0", "12-1"]
    for doc in corpus:
        assert set(doc) == {"_id", "title", "text"}
        assert 20 <= len(doc["text"].split()) <= 60, doc
        assert "References" not in doc["text"] and "Section" not in doc["text"] and "  " not in doc["text"]
    assert len({d["_id"] for d in corpus}) == len(corpus)

    assert s["articles_read"] == 6 and s["articles_kept"] == 3
    assert s["articles_skipped"] == {"disambiguation": 1, "duplicate_id": 1, "too_short": 1}
    assert s["passages_written"] == len(corpus)
    report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    assert report["files"][shard.name]["bad_by_reason"] == {"bad id": 1, "bad text": 1, "duplicate id": 1}
    assert [e["row"] for e in report["files"][shard.name]["bad_examples"]] == [5, 6, 7]
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(shard) in warning and "row 5" in warning

    pairs = _jsonl(out / "pairs.jsonl")
    by_kind = {k: [p for p in pairs if p["kind"] == k] for k in ("title", "adjacent")}
    assert s["pairs_written"] == {"title": len(corpus), "adjacent": len(corpus) - 3}
    assert len(by_kind["title"]) == len(corpus) and len(by_kind["adjacent"]) == len(corpus) - 3
    texts = {d["_id"]: d for d in corpus}
    for p in pairs:
        assert set(p) == {"kind", "anchor", "positive", "anchor_id", "positive_id"}
        assert texts[p["positive_id"]]["text"] == p["positive"]
        if p["kind"] == "title":
            assert p["anchor"] == texts[p["positive_id"]]["title"]
        else:
            assert texts[p["anchor_id"]]["text"] == p["anchor"]
            article, n = p["anchor_id"].rsplit("-", 1)
            assert p["positive_id"] == f"{article}-{int(n) + 1}"
    assert [p["positive_id"] for p in pairs] != sorted(p["positive_id"] for p in pairs)  # shuffled


def test_wikipedia_deterministic_and_num_passages(tmp_path: Path) -> None:
    shard = wiki_parquet(tmp_path / "s.parquet")
    runs = [_snapshot(Path(prepare_wikipedia(tmp_path / f"o{i}", shard, min_words=20, max_words=60, seed=3,
                                             progress=False)["output"])) for i in range(2)]
    assert runs[0] == runs[1]
    s = prepare_wikipedia(tmp_path / "few", shard, num_passages=4, min_words=20, max_words=60, pairs=False,
                          progress=False)
    assert s["passages_written"] == 4 and s["stopped_at_num_passages"] is True
    assert not (tmp_path / "few" / "pairs.jsonl").exists()
    assert len(_jsonl(tmp_path / "few" / "corpus.jsonl")) == 4


def test_wikipedia_jsonl_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = {"id": "7", "title": "Tides", "text": _article_text("7")}
    src = _write(tmp_path / "wiki.jsonl", [json.dumps(good), "{not json", json.dumps([1, 2]),
                                           json.dumps({"id": "8", "title": "T"}), b"\xff\xfe",
                                           json.dumps({"id": 9, "title": "Nine", "text": _article_text("9")})])
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.prepare"):
        s = prepare_wikipedia(tmp_path / "out", src, min_words=20, max_words=60, progress=False)
    f = s["files"]["wiki.jsonl"]
    assert f["rows_read"] == 6 and f["rows_kept"] == 2 and f["bad_rows"] == 4
    assert [e["line"] for e in f["bad_examples"]] == [2, 3, 4, 5]
    assert any(str(src) in r.getMessage() and "line 2" in r.getMessage() for r in caplog.records)
    assert {d["_id"].split("-")[0] for d in _jsonl(tmp_path / "out" / "corpus.jsonl")} == {"7", "9"}


@pytest.mark.parametrize("name", ["enwiki-pages-articles.xml", "enwiki-pages-articles.xml.bz2"])
def test_wikipedia_xml_dump(tmp_path: Path, name: str) -> None:
    dump = wiki_xml(tmp_path / name)
    s = prepare_wikipedia(tmp_path / "out", dump, min_words=10, max_words=200, progress=False)
    assert s["format"] == "xml"
    assert s["articles_read"] == 4 and s["articles_kept"] == 1
    assert s["articles_skipped"] == {"disambiguation": 1, "not_article": 1, "redirect": 1}
    corpus = _jsonl(tmp_path / "out" / "corpus.jsonl")
    assert [d["_id"] for d in corpus] == ["100-0", "100-1", "100-2"]  # one per paragraph
    text = " ".join(d["text"] for d in corpus)
    assert corpus[0]["title"] == "Vulcan (hypothetical planet)"
    assert text.startswith("Vulcan is a hypothesised planet once thought to orbit between Mercury and the Sun.")
    assert "(planète Vulcain)" in text and "43 arcseconds" in text and "see the archive for details." in text
    assert "Einstein's theory" in text and "observers & the search" in text
    for junk in ("{{", "}}", "[[", "<ref", "Le Verrier, 1859", "hidden note", "wikitable", "Lescarbault",
                 "list item", "Reference", "Category", "caption", "https://", "Observations", "'''"):
        assert junk not in text, junk


def test_xml_plain_and_bz2_agree(tmp_path: Path) -> None:
    a = prepare_wikipedia(tmp_path / "a", wiki_xml(tmp_path / "d.xml"), min_words=10, progress=False)
    b = prepare_wikipedia(tmp_path / "b", wiki_xml(tmp_path / "d.xml.bz2"), min_words=10, progress=False)
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() == (tmp_path / "b" / "corpus.jsonl").read_bytes()
    assert (tmp_path / "a" / "pairs.jsonl").read_bytes() == (tmp_path / "b" / "pairs.jsonl").read_bytes()
    assert a["passages_written"] == b["passages_written"]


def test_clean_wikitext_details() -> None:
    paragraphs = clean_wikitext(
        "{{Infobox|a={{nested|b}}}}Text with [[a|label]]s, [[Plain]], [[:Category:Shown]] and "
        "[[Category:Hidden]].<ref name=x/> More&nbsp;text <b>bold</b>.\n\n"
        "Second paragraph {{cite web|url=x}}( ; ) here.\n== See also ==\nDropped section.\n== Later ==\nKept.")
    assert paragraphs == ["Text with labels, Plain, Category:Shown and. More text bold.", "Second paragraph here.",
                          "Kept."]


def test_split_passages_bounds() -> None:
    sentence = "one two three four five six seven."
    paragraphs = [" ".join([sentence] * 5), " ".join([sentence] * 2), "x " * 50 + "end."]
    passages, dropped = split_passages(paragraphs, 10, 20)
    assert dropped == 0
    assert all(10 <= len(p.split()) <= 20 for p in passages), [len(p.split()) for p in passages]
    assert " ".join(passages).split() == " ".join(paragraphs).split()  # nothing lost or added
    # A short tail that cannot join the previous passage is dropped.
    passages, dropped = split_passages(["a b c d e f g h i j.", "k l."], 10, 10)
    assert passages == ["a b c d e f g h i j."] and dropped == 1
    # Chinese counts characters as words and keeps them unspaced.
    assert split_passages(["维基百科是一个自由的百科全书。它由志愿者编写。"], 5, 12) == \
        (["维基百科是一个自由的百科", "全书。它由志愿者编写。"], 0)
    assert split_passages(["维基百科是自由的百科全书。", "它由志愿者编写。"], 20, 30) == \
        (["维基百科是自由的百科全书。它由志愿者编写。"], 0)


def test_wikipedia_fatal_errors_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "out")
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(tmp_path / "none.parquet")])
    _one_error_line(rc, err, str(tmp_path / "none.parquet"), "not found")

    odd = _write(tmp_path / "dump.txt", ["hello"])
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(odd)])
    _one_error_line(rc, err, str(odd), "unknown Wikipedia file type")

    broken = _write(tmp_path / "broken.xml", ["<mediawiki><page><title>A</title>", "</mediawiki>"])
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(broken)])
    _one_error_line(rc, err, f"{broken}:2", "malformed XML")

    fake = _write(tmp_path / "fake.parquet", ["not parquet"])
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(fake)])
    _one_error_line(rc, err, str(fake), "not a readable parquet file")

    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["x"]}), wrong)
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(wrong)])
    _one_error_line(rc, err, str(wrong), "lacks column(s) title, text")

    stubs = _write(tmp_path / "stubs.jsonl", [json.dumps({"id": "1", "title": "S", "text": "Too short."})])
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(stubs)])
    _one_error_line(rc, err, str(stubs), "no usable article", "1 too_short")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_wikipedia_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shard = wiki_parquet(tmp_path / "s.parquet")
    rc, out, err = _cli(capsys, ["prepare", "wikipedia", "--output", str(tmp_path / "o"), "--source", str(shard),
                                 "--min-words", "20", "--max-words", "60", "--num-passages", "0"])
    assert rc == 0, err
    assert out.startswith(f"{tmp_path / 'o'}: ") and "from 3 of 6 articles" in out


def test_wikipedia_download_hf_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    wiki_parquet(hub / "20231101.xx" / "train-00000-of-00002.parquet")
    # The second shard is listed but absent: reaching num_passages in the first must stop there.
    listing = [{"type": "file", "path": f"20231101.xx/train-0000{i}-of-00002.parquet", "size": 1} for i in (1, 0)]
    _write(tmp_path / "tree-20231101.xx.json", [json.dumps(listing)])
    monkeypatch.setattr(prep, "WIKI_TREE_URL", tmp_path.as_uri() + "/tree-{dump_date}.{lang}.json")
    monkeypatch.setattr(prep, "WIKI_FILE_URL", hub.as_uri() + "/{path}")

    out = tmp_path / "out" / "wiki"
    with pytest.raises(SmecError, match="downloads are off"):
        prepare_wikipedia(out, download=True, lang="xx", num_passages=3, min_words=20, max_words=60, progress=False)
    assert not out.parent.exists()
    _online(monkeypatch)
    s = prepare_wikipedia(out, download=True, lang="xx", num_passages=3, min_words=20, max_words=60,
                          progress=False)
    assert s["passages_written"] == 3 and list(s["files"]) == ["train-00000-of-00002.parquet"]
    assert s["files"]["train-00000-of-00002.parquet"]["path"] == hub.as_uri() + "/20231101.xx/train-00000-of-00002.parquet"
    assert sorted(p.name for p in out.parent.iterdir()) == ["wiki"]
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "pairs.jsonl", "prepare.json"]

    with pytest.raises(SmecError, match="download failed"):  # all passages: the absent shard is fetched
        prepare_wikipedia(tmp_path / "all", download=True, lang="xx", num_passages=None, min_words=20,
                          progress=False)
    assert not (tmp_path / "all").exists()
    with pytest.raises(SmecError, match="download failed"):
        prepare_wikipedia(tmp_path / "yy", download=True, lang="yy", progress=False)

    dump = wiki_xml(tmp_path / "mirror" / "enwiki-20231101-pages-articles1.xml.bz2")
    s = prepare_wikipedia(tmp_path / "byurl", download=True, url=dump.as_uri(), min_words=10, progress=False)
    assert s["source"] == dump.as_uri() and s["passages_written"] == 3


WIKI_URLS_REAL = (prep.WIKI_TREE_URL, prep.WIKI_FILE_URL)


def test_wikipedia_default_urls() -> None:
    assert WIKI_URLS_REAL[0].format(dump_date="20231101", lang="en") == \
        "https://huggingface.co/api/datasets/wikimedia/wikipedia/tree/main/20231101.en"
    assert WIKI_URLS_REAL[1].format(path="20231101.en/train-00000-of-00041.parquet") == \
        "https://huggingface.co/datasets/wikimedia/wikipedia/resolve/main/20231101.en/train-00000-of-00041.parquet"


def test_wikipedia_download_refused_offline_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", str(tmp_path / "o"), "--download",
                               "--lang", "de"])
    _one_error_line(rc, err, "downloads are off", "20231101.de")
    rc, _, err = _cli(capsys, ["prepare", "wikipedia", "--output", str(tmp_path / "o"), "--source", "x.parquet",
                               "--url", "file:///x.parquet"])
    _one_error_line(rc, err, "--download --url")
    assert list(tmp_path.iterdir()) == []
