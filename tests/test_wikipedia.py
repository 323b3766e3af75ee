"""Tests for ``smec prepare wikipedia`` (smec_dist.data.wikipedia, .wikitext): Wikipedia passages
and pairs (no network).

Fixtures are written into tmp_path in the real files' formats: a wikimedia/wikipedia parquet
shard; JSONL; and a MediaWiki pages-articles XML dump, plain and bz2.
"""

from __future__ import annotations

import bz2
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smec_dist.data import wikipedia
from smec_dist.data.wikipedia import prepare_wikipedia
from smec_dist.data.wikitext import clean_wikitext, split_passages
from smec_dist.errors import SmecError
from tests.prepare_helpers import go_online, one_error_line, read_jsonl, run_cli, snapshot, write_lines
from tests.prepare_helpers import offline  # noqa: F401 - the autouse fixture: imported to apply here

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
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.files"):
        s = prepare_wikipedia(out, shard, num_passages=None, min_words=20, max_words=60, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "pairs.jsonl", "prepare.json"]
    corpus = read_jsonl(out / "corpus.jsonl")
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

    pairs = read_jsonl(out / "pairs.jsonl")
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
    runs = [snapshot(Path(prepare_wikipedia(tmp_path / f"o{i}", shard, min_words=20, max_words=60, seed=3,
                                             progress=False)["output"])) for i in range(2)]
    assert runs[0] == runs[1]
    s = prepare_wikipedia(tmp_path / "few", shard, num_passages=4, min_words=20, max_words=60, pairs=False,
                          progress=False)
    assert s["passages_written"] == 4 and s["stopped_at_num_passages"] is True
    assert not (tmp_path / "few" / "pairs.jsonl").exists()
    assert len(read_jsonl(tmp_path / "few" / "corpus.jsonl")) == 4


def test_wikipedia_jsonl_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = {"id": "7", "title": "Tides", "text": _article_text("7")}
    src = write_lines(tmp_path / "wiki.jsonl", [json.dumps(good), "{not json", json.dumps([1, 2]),
                                           json.dumps({"id": "8", "title": "T"}), b"\xff\xfe",
                                           json.dumps({"id": 9, "title": "Nine", "text": _article_text("9")})])
    with caplog.at_level(logging.WARNING, logger="smec_dist.data.files"):
        s = prepare_wikipedia(tmp_path / "out", src, min_words=20, max_words=60, progress=False)
    f = s["files"]["wiki.jsonl"]
    assert f["rows_read"] == 6 and f["rows_kept"] == 2 and f["bad_rows"] == 4
    assert [e["line"] for e in f["bad_examples"]] == [2, 3, 4, 5]
    assert any(str(src) in r.getMessage() and "line 2" in r.getMessage() for r in caplog.records)
    assert {d["_id"].split("-")[0] for d in read_jsonl(tmp_path / "out" / "corpus.jsonl")} == {"7", "9"}


@pytest.mark.parametrize("name", ["enwiki-pages-articles.xml", "enwiki-pages-articles.xml.bz2"])
def test_wikipedia_xml_dump(tmp_path: Path, name: str) -> None:
    dump = wiki_xml(tmp_path / name)
    s = prepare_wikipedia(tmp_path / "out", dump, min_words=10, max_words=200, progress=False)
    assert s["format"] == "xml"
    assert s["articles_read"] == 4 and s["articles_kept"] == 1
    assert s["articles_skipped"] == {"disambiguation": 1, "not_article": 1, "redirect": 1}
    corpus = read_jsonl(tmp_path / "out" / "corpus.jsonl")
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
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(tmp_path / "none.parquet")])
    one_error_line(rc, err, str(tmp_path / "none.parquet"), "not found")

    odd = write_lines(tmp_path / "dump.txt", ["hello"])
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(odd)])
    one_error_line(rc, err, str(odd), "unknown Wikipedia file type")

    broken = write_lines(tmp_path / "broken.xml", ["<mediawiki><page><title>A</title>", "</mediawiki>"])
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(broken)])
    one_error_line(rc, err, f"{broken}:2", "malformed XML")

    fake = write_lines(tmp_path / "fake.parquet", ["not parquet"])
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(fake)])
    one_error_line(rc, err, str(fake), "not a readable parquet file")

    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["x"]}), wrong)
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(wrong)])
    one_error_line(rc, err, str(wrong), "lacks column(s) title, text")

    stubs = write_lines(tmp_path / "stubs.jsonl", [json.dumps({"id": "1", "title": "S", "text": "Too short."})])
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", out, "--source", str(stubs)])
    one_error_line(rc, err, str(stubs), "no usable article", "1 too_short")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_wikipedia_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shard = wiki_parquet(tmp_path / "s.parquet")
    rc, out, err = run_cli(capsys, ["prepare", "wikipedia", "--output", str(tmp_path / "o"), "--source", str(shard),
                                 "--min-words", "20", "--max-words", "60", "--num-passages", "0"])
    assert rc == 0, err
    assert out.startswith(f"{tmp_path / 'o'}: ") and "from 3 of 6 articles" in out


def test_wikipedia_download_hf_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    wiki_parquet(hub / "20231101.xx" / "train-00000-of-00002.parquet")
    # The second shard is listed but absent: reaching num_passages in the first must stop there.
    listing = [{"type": "file", "path": f"20231101.xx/train-0000{i}-of-00002.parquet", "size": 1} for i in (1, 0)]
    write_lines(tmp_path / "tree-20231101.xx.json", [json.dumps(listing)])
    monkeypatch.setattr(wikipedia, "WIKI_TREE_URL", tmp_path.as_uri() + "/tree-{dump_date}.{lang}.json")
    monkeypatch.setattr(wikipedia, "WIKI_FILE_URL", hub.as_uri() + "/{path}")

    out = tmp_path / "out" / "wiki"
    with pytest.raises(SmecError, match="downloads are off"):
        prepare_wikipedia(out, download=True, lang="xx", num_passages=3, min_words=20, max_words=60, progress=False)
    assert not out.parent.exists()
    go_online(monkeypatch)
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


WIKI_URLS_REAL = (wikipedia.WIKI_TREE_URL, wikipedia.WIKI_FILE_URL)


def test_wikipedia_default_urls() -> None:
    assert WIKI_URLS_REAL[0].format(dump_date="20231101", lang="en") == \
        "https://huggingface.co/api/datasets/wikimedia/wikipedia/tree/main/20231101.en"
    assert WIKI_URLS_REAL[1].format(path="20231101.en/train-00000-of-00041.parquet") == \
        "https://huggingface.co/datasets/wikimedia/wikipedia/resolve/main/20231101.en/train-00000-of-00041.parquet"


def test_wikipedia_download_refused_offline_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", str(tmp_path / "o"), "--download",
                               "--lang", "de"])
    one_error_line(rc, err, "downloads are off", "20231101.de")
    rc, _, err = run_cli(capsys, ["prepare", "wikipedia", "--output", str(tmp_path / "o"), "--source", "x.parquet",
                               "--url", "file:///x.parquet"])
    one_error_line(rc, err, "--download --url")
    assert list(tmp_path.iterdir()) == []
