"""End-to-end tests of the ``smec`` command, called in-process through ``smec_dist.cli.main``.

A tiny BEIR dataset (60 SciFact documents, 20 test + 20 train queries) is written under
pytest's tmp folder, encoded once with the real MiniLM backbone (offline, a few seconds) and
shared by the module. Bad inputs must end with status 2 and a single ``smec: error: ...``
line on stderr naming the culprit, with no traceback and no report left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from smec_dist.cache import MANIFEST, is_complete, load_cache
from smec_dist.cli import main
from smec_dist.config import load_config
from smec_dist.method.export import CompressedModel, save_head
from smec_dist.method.smrl import SMECHead

ROOT = Path(__file__).resolve().parents[1]
DATASET = "tiny"
N_TEST_QUERIES = 20
N_TRAIN_QUERIES = 20
N_DOCS = 60
FULL_DIM = 384  # all-MiniLM-L6-v2
DIMS = [32, 16]
TRAINED = ("linear", "mrl", "smec")
UNTRAINED = ("full", "bm25", "truncation", "pca")
REPORT_FILES = ("results.json", "report.md", "plot.png", "config.yaml")


# --------------------------------------------------------------------------- helpers


def build_tiny_beir(src: Path, dst: Path) -> Path:
    """Copies a small, self-consistent slice of a BEIR dataset into ``dst``.

    The first N test and N train queries (in qrels order) with their judged documents, plus
    filler documents from the start of the corpus up to N_DOCS; every qrels line refers to a
    copied query and document.
    """
    def qrels_rows(split: str) -> list[list[str]]:
        lines = (src / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t") for line in lines if line.strip()]

    def first_queries(rows: list[list[str]], n: int) -> list[list[str]]:
        keep = set(list(dict.fromkeys(r[0] for r in rows))[:n])
        return [r for r in rows if r[0] in keep]

    qrels = {"test": first_queries(qrels_rows("test"), N_TEST_QUERIES),
             "train": first_queries(qrels_rows("train"), N_TRAIN_QUERIES)}
    corpus_lines = (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    by_id = {json.loads(line)["_id"]: line for line in corpus_lines if line.strip()}
    keep_docs = list(dict.fromkeys(r[1] for rows in qrels.values() for r in rows if r[1] in by_id))
    assert len(keep_docs) < N_DOCS, "too many judged documents for the tiny dataset"
    for doc_id in by_id:
        if len(keep_docs) >= N_DOCS:
            break
        if doc_id not in keep_docs:
            keep_docs.append(doc_id)
    kept = set(keep_docs)
    qrels = {split: [r for r in rows if r[1] in kept] for split, rows in qrels.items()}
    qids = {r[0] for rows in qrels.values() for r in rows}

    (dst / "qrels").mkdir(parents=True)
    (dst / "corpus.jsonl").write_text("".join(by_id[d] for d in keep_docs), encoding="utf-8")
    query_lines = (src / "queries.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (dst / "queries.jsonl").write_text(
        "".join(line for line in query_lines if line.strip() and json.loads(line)["_id"] in qids), encoding="utf-8")
    for split, rows in qrels.items():
        (dst / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return dst


def overrides(data_root: Path, out: Path, cache: Path, *extra: str,
              settings: str = "[unsupervised-queries,supervised]") -> list[str]:
    """The overrides that keep a run tiny; later ``extra`` items win over earlier ones."""
    return [f"data.data_dir={data_root}", f"data.dataset={DATASET}", f"run.output_dir={out}", "run.overwrite=true",
            f"cache.dir={cache}", f"run.dims=[{','.join(map(str, DIMS))}]", "train.epochs=1",
            "train.topk=10", "run.progress=false", f"run.settings={settings}", "run.search_k=20", "run.k_values=[10,20]", *extra]


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """Runs ``main`` with stdout and stderr captured (for module-scoped fixtures, where capsys is not available)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_error_line(rc: int, out: str, err: str, *needles) -> str:
    """Status 2, exactly one stderr line ``smec: error: ...`` containing every needle, no traceback."""
    assert rc == 2, f"exit status {rc}; stderr: {err!r}"
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr is not exactly one line: {err!r}"
    assert lines[0].startswith("smec: error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_left(out_dir: Path, cache_dir: Path | None = None) -> None:
    """A failed run wrote nothing: the run folder holds only what an earlier run left there (as
    it was: :func:`seed_stale_report`), no staging folder is left beside it, no cache was sealed."""
    if out_dir.exists():
        left = {str(p.relative_to(out_dir)): p.read_text() for p in out_dir.rglob("*") if p.is_file()}
        assert left == {name: "stale\n" for name in left} and set(left) <= set(STALE_FILES), f"written: {left}"
    assert not list(out_dir.parent.glob(f".{out_dir.name}.*")), "a staging folder was left behind"
    if cache_dir is not None:
        assert not (cache_dir / MANIFEST).exists(), "a cache manifest was written for a failed run"


STALE_FILES = ("results.json", "report.md", "plot.png")


def seed_stale_report(out_dir: Path) -> None:
    """The files of an earlier run (runs here pass run.overwrite=true): a failed run must leave
    them exactly as they were and add nothing (:func:`assert_nothing_left`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in STALE_FILES:
        (out_dir / name).write_text("stale\n")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on small CPU boxes the multi-threaded SVD/QR of the PCA
    initialisation is orders of magnitude slower (seconds per call) than single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir) -> Path:
    """Folder holding ``data/tiny`` (the dataset); runs and caches go beside it."""
    base = tmp_path_factory.mktemp("smec-cli")
    build_tiny_beir(data_dir / "scifact", base / "data" / DATASET)
    return base


@pytest.fixture(scope="module")
def encoded(tiny) -> dict:
    """``smec encode`` of the tiny dataset into a fresh cache (shared by the module)."""
    cache = tiny / "cache"
    rc, out, err = invoke(["encode", *overrides(tiny / "data", tiny / "unused-out", cache)])
    return {"rc": rc, "out": out, "err": err, "cache": cache}


@pytest.fixture(scope="module")
def first_run(tiny, encoded) -> dict:
    """``smec run`` on the shared cache: unsupervised-queries and supervised, all methods."""
    assert encoded["rc"] == 0, encoded["err"]
    out = tiny / "run1"
    before = mtimes(encoded["cache"])
    rc, stdout, stderr = invoke(["run", *overrides(tiny / "data", out, encoded["cache"])])
    results = json.loads((out / "results.json").read_text()) if rc == 0 else None
    return {"rc": rc, "out": out, "stdout": stdout, "stderr": stderr, "results": results,
            "cache_before": before, "cache_after": mtimes(encoded["cache"])}


@pytest.fixture(scope="module")
def too_wide(tiny) -> dict:
    """``smec run`` with run.dims=[512,256] (wider than MiniLM's 384) and a fresh cache."""
    out, cache = tiny / "too-wide-out", tiny / "too-wide-cache"
    seed_stale_report(out)
    rc, stdout, stderr = invoke(["run", *overrides(tiny / "data", out, cache, "run.dims=[512,256]")])
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "out": out, "cache": cache}


@pytest.fixture()
def dataset_copy(tiny, tmp_path) -> Path:
    """A private copy of the tiny dataset (``<tmp>/data/tiny``) that a test may break."""
    dst = tmp_path / "data" / DATASET
    shutil.copytree(tiny / "data" / DATASET, dst)
    return dst


@pytest.fixture()
def random_head(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_head(SMECHead(FULL_DIM, DIMS), tmp_path / "head.safetensors")


# --------------------------------------------------------------------------- the tiny dataset


def test_tiny_dataset_is_consistent(tiny):
    from smec_dist.data import load_beir

    ds = load_beir(tiny / "data" / DATASET)
    assert len(ds.corpus) == N_DOCS
    assert ds.splits == ["test", "train"]
    assert len(ds.qrels["test"]) == N_TEST_QUERIES and len(ds.qrels["train"]) == N_TRAIN_QUERIES
    assert len(ds.queries) == N_TEST_QUERIES + N_TRAIN_QUERIES


# --------------------------------------------------------------------------- smec encode


def test_encode_writes_a_complete_cache(tiny, encoded):
    assert encoded["rc"] == 0, encoded["err"]
    assert "Traceback" not in encoded["out"] + encoded["err"]
    cache = encoded["cache"]
    assert encoded["out"].strip().splitlines()[-1] == str(cache)  # prints where the cache is
    assert (cache / MANIFEST).is_file() and is_complete(cache)
    loaded = load_cache(cache)  # verifies every shard's sha256
    assert loaded.dim == FULL_DIM
    assert loaded.count("corpus") == N_DOCS and loaded.count("queries") == N_TEST_QUERIES + N_TRAIN_QUERIES
    corpus_ids = [json.loads(line)["_id"] for line in (tiny / "data" / DATASET / "corpus.jsonl").open()]
    assert loaded.ids("corpus") == corpus_ids
    emb = loaded.embeddings("corpus")
    assert emb.shape == (N_DOCS, FULL_DIM) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    assert not list(cache.rglob("*.tmp")), "temporary files left in the cache"


def test_encode_again_is_a_no_op(tiny, encoded, capsys, caplog):
    assert encoded["rc"] == 0, encoded["err"]
    before = mtimes(encoded["cache"])
    caplog.set_level(logging.INFO)
    rc = main(["encode", *overrides(tiny / "data", tiny / "unused-out", encoded["cache"])])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == str(encoded["cache"])
    assert mtimes(encoded["cache"]) == before, "a complete cache was rewritten"
    assert any("reusing" in r.getMessage() or "nothing to encode" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- smec run


def test_run_happy_path(first_run):
    assert first_run["rc"] == 0, first_run["stderr"]
    assert "Traceback" not in first_run["stdout"] + first_run["stderr"]
    out, results = first_run["out"], first_run["results"]
    meta = results["meta"]
    assert meta["full_dim"] == FULL_DIM and meta["dims"] == DIMS and meta["dataset"] == DATASET
    assert meta["n_docs"] == N_DOCS and meta["n_queries"] == N_TEST_QUERIES and meta["model"] == "minilm"
    assert meta["bm25"] == "BM25 (bm25s, k1=1.2, b=0.75, stemmer=none, stopwords=en)"  # as it ran, named
    assert meta["loss"]["supervised"]["temperature"] == 0.05 and meta["loss"]["supervised"]["infonce_weight"] == 1.0
    assert meta["loss"]["unsupervised-queries"] == {**meta["loss"]["supervised"], "temperature": 0.03,
                                                     "infonce_weight": 0.0}
    assert set(results["settings"]) == {"unsupervised-queries", "supervised"}
    for setting, methods in results["settings"].items():
        assert set(methods) == set(UNTRAINED + TRAINED), setting
        assert set(methods["full"]) == {str(FULL_DIM)}
        assert set(methods["bm25"]) == {"sparse"}
        for method in ("truncation", "pca") + TRAINED:
            assert set(methods[method]) == {str(d) for d in DIMS}, (setting, method)
        for method, by_dim in methods.items():
            for dim, metrics in by_dim.items():
                assert 0.0 <= metrics["nDCG@10"] <= 1.0, (setting, method, dim)
        assert methods["full"][str(FULL_DIM)]["nDCG@10"] > 0.5  # MiniLM finds the judged docs
    for name in ("results.json", "report.md", "plot.png", "config.yaml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "smec" in (out / "report.md").read_text()
    assert load_config(out / "config.yaml").run.dims == DIMS  # the saved config reloads
    stdout = first_run["stdout"]
    for setting in results["settings"]:
        assert f"[{setting}]" in stdout
    for method in UNTRAINED + TRAINED:
        assert any(line.split()[:1] == [method] for line in stdout.splitlines()), method
    assert str(out / "results.json") in stdout


def test_run_reuses_the_encode_cache(first_run):
    assert first_run["rc"] == 0, first_run["stderr"]
    assert first_run["cache_after"] == first_run["cache_before"]


def test_run_saves_heads_that_compress(first_run, encoded):
    assert first_run["rc"] == 0, first_run["stderr"]
    x = load_cache(encoded["cache"]).embeddings("corpus")
    for setting in first_run["results"]["settings"]:
        for method in TRAINED:
            assert (first_run["out"] / "models" / setting / f"{method}.safetensors").is_file(), (setting, method)
        model = CompressedModel.load(first_run["out"] / "models" / setting / "smec.safetensors")
        assert model.dims == DIMS
        for d in DIMS:
            y = model.compress(x, d)
            assert isinstance(y, np.ndarray) and y.shape == (N_DOCS, d)
            assert np.isfinite(y).all()
            np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_second_run_reuses_cache_and_repeats_baselines(tiny, encoded, first_run, capsys, caplog):
    """Second run, corpus-only setting: no shard rewritten, untrained baselines bit-identical."""
    assert first_run["rc"] == 0, first_run["stderr"]
    cache, out = encoded["cache"], tiny / "run2"
    before = mtimes(cache)
    caplog.set_level(logging.INFO)
    rc = main(["run", *overrides(tiny / "data", out, cache, "run.methods=[full,bm25,truncation,pca,smec]",
                                 settings="[corpus-only]")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert mtimes(cache) == before, "the second run rewrote the cache"
    assert any("reusing" in r.getMessage() for r in caplog.records)
    second = json.loads((out / "results.json").read_text())
    assert set(second["settings"]) == {"corpus-only"}
    first = first_run["results"]["settings"]["unsupervised-queries"]
    def quality(by_dim: dict) -> dict:  # search time differs from run to run; everything else must not
        return {d: {k: v for k, v in m.items() if k != "ms/query"} for d, m in by_dim.items()}

    for method in UNTRAINED:
        assert quality(second["settings"]["corpus-only"][method]) == quality(first[method]), method
    assert (out / "models" / "corpus-only" / "smec.safetensors").is_file()
    assert set(second["settings"]["corpus-only"]["smec"]) == {str(d) for d in DIMS}


def test_run_does_not_reuse_a_cache_of_another_model(tiny, encoded, tmp_path, capsys):
    assert encoded["rc"] == 0, encoded["err"]
    rc = main(["run", *overrides(tiny / "data", tmp_path / "out", encoded["cache"],
                                 "model.name=/nonexistent/model", "run.methods=[full]", settings="[supervised]")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err)
    assert_nothing_left(tmp_path / "out")


# --------------------------------------------------------------------------- bad datasets


def _rewrite(path: Path, fn) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(fn(lines)), encoding="utf-8")


def _malformed_json(ds: Path) -> list[str]:
    def fn(lines):
        lines[4] = '{"_id": "broken", "text": "no closing brace"\n'
        return lines
    _rewrite(ds / "corpus.jsonl", fn)
    return [f"{ds / 'corpus.jsonl'}:5:", "JSON"]


def _missing_id(ds: Path) -> list[str]:
    def fn(lines):
        rec = json.loads(lines[2])
        del rec["_id"]
        lines[2] = json.dumps(rec) + "\n"
        return lines
    _rewrite(ds / "corpus.jsonl", fn)
    return [f"{ds / 'corpus.jsonl'}:3:", "_id"]


def _duplicate_id(ds: Path) -> list[str]:
    first_id = []

    def fn(lines):
        first_id.append(json.loads(lines[1])["_id"])
        rec = json.loads(lines[6])
        rec["_id"] = first_id[0]
        lines[6] = json.dumps(rec) + "\n"
        return lines
    _rewrite(ds / "corpus.jsonl", fn)
    return [f"{ds / 'corpus.jsonl'}:7:", "duplicate", first_id[0], "line 2"]


def _only_absent_docs_in_qrels(ds: Path) -> list[str]:
    path = ds / "qrels" / "test.tsv"
    qids = [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()[1:3]]
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\tno-such-doc\t1\n" for q in qids), encoding="utf-8")
    return [str(path), "no judgment left", "no-such-doc"]


def _empty_corpus(ds: Path) -> list[str]:
    (ds / "corpus.jsonl").write_text("", encoding="utf-8")
    return [str(ds / "corpus.jsonl"), "no documents"]


@pytest.mark.parametrize("breaker", [_malformed_json, _missing_id, _duplicate_id, _only_absent_docs_in_qrels, _empty_corpus],
                         ids=["malformed-json", "missing-id", "duplicate-id", "only-absent-docs-in-qrels", "empty-corpus"])
def test_bad_dataset(dataset_copy, tmp_path, capsys, breaker):
    needles = breaker(dataset_copy)
    out, cache = tmp_path / "out", tmp_path / "cache"
    seed_stale_report(out)
    rc = main(["run", *overrides(dataset_copy.parent, out, cache)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, *needles)
    assert_nothing_left(out, cache)
    assert not cache.exists()  # nothing was encoded


# --------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("extra, needles", [
    (["run.dims=[16,32]"], ["run.dims", "decreasing"]),
    (["train.epoch=3"], ["train.epoch", "command line"]),
    (["run.dims=[32,0]"], ["run.dims"]),
    (["model.pooling=max"], ["model.pooling", "max"]),
    (["run.validation=holdout:1.5"], ["run.validation", "holdout:1.5"]),
    (["run.validation=dev"], ["run.validation", "dev"]),
], ids=["dims-increasing", "unknown-key", "dims-zero", "pooling", "validation-fraction", "validation-form"])
def test_bad_config_fails_before_doing_anything(tiny, tmp_path, capsys, extra, needles):
    out, cache = tmp_path / "out", tmp_path / "cache"
    rc = main(["run", *overrides(tiny / "data", out, cache, *extra)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, *needles)
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("command", ["encode", "config"])
def test_bad_config_in_other_commands(tiny, tmp_path, capsys, command):
    rc = main([command, *overrides(tiny / "data", tmp_path / "out", tmp_path / "cache", "train.epoch=3")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, "train.epoch")
    assert cap.out == ""
    assert not (tmp_path / "cache").exists()


def test_bad_config_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  dims: [32, 16]\ntrain:\n\tepochs: 3\n", encoding="utf-8")
    rc = main(["run", "--config", str(path)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, f"{path}:4")


def test_missing_config_file(tmp_path, capsys):
    rc = main(["run", "--config", str(tmp_path / "nope.yaml")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, tmp_path / "nope.yaml")


@pytest.mark.parametrize("extra, needles", [
    (["model.name=/nonexistent/model"], ["/nonexistent/model"]),
    (["run.anchors=bogus"], ["anchor", "bogus"]),
    (["data.eval_split=dev"], ["data.eval_split", "dev"]),
    (["data.dataset=no-such-dataset"], ["no-such-dataset"]),
], ids=["missing-model", "bad-anchors", "absent-eval-split", "missing-dataset"])
def test_bad_run_inputs(tiny, tmp_path, capsys, monkeypatch, extra, needles):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing dataset must not be downloaded
    out, cache = tmp_path / "out", tmp_path / "cache"
    seed_stale_report(out)
    rc = main(["run", *overrides(tiny / "data", out, cache, *extra)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, *needles)
    assert_nothing_left(out, cache)


def test_supervised_split_equal_to_eval_split(tiny, encoded, tmp_path, capsys):
    """Detected only when the supervised setting is built (after encoding): use the shared cache."""
    assert encoded["rc"] == 0, encoded["err"]
    before = mtimes(encoded["cache"])
    out = tmp_path / "out"
    seed_stale_report(out)
    rc = main(["run", *overrides(tiny / "data", out, encoded["cache"], "run.supervised_split=test",
                                 "run.methods=[full,smec]", settings="[supervised]")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, "run.supervised_split", "'test'")
    assert_nothing_left(out)
    assert mtimes(encoded["cache"]) == before


def test_validation_holds_judged_queries_out_and_scores_them(tiny, encoded, tmp_path, capsys):
    """run.validation=holdout:0.25: a quarter of the 20 judged train queries leave the anchors
    and the judged pairs, and every method and dim is also scored on them."""
    assert encoded["rc"] == 0, encoded["err"]
    out = tmp_path / "out"
    rc = main(["run", *overrides(tiny / "data", out, encoded["cache"], "run.validation=holdout:0.25",
                                 "run.methods=[full,bm25,pca,linear,smec]")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert meta["n_validation_queries"] == N_TRAIN_QUERIES // 4 and meta["validation_split"] == "train"
    assert meta["n_anchor_queries"] == N_TRAIN_QUERIES - N_TRAIN_QUERIES // 4  # held out of the anchors too
    assert meta["n_queries"] == N_TEST_QUERIES  # the test scores are untouched
    assert set(results["validation"]) == set(results["settings"]) == {"unsupervised-queries", "supervised"}
    for setting, methods in results["validation"].items():
        assert set(methods) == {"full", "bm25", "pca", "linear", "smec"}, setting
        assert set(methods["smec"]) == {str(d) for d in DIMS}
        for by_dim in methods.values():
            for metrics in by_dim.values():
                assert 0.0 <= metrics["nDCG@10"] <= 1.0
    # the validation queries are other queries: their scores are not the test ones
    assert results["validation"]["supervised"]["full"] != results["settings"]["supervised"]["full"]
    assert "held-out judged queries of split 'train'" in (out / "report.md").read_text()
    assert "[supervised] (validation) nDCG@10" in cap.out


def test_validation_queries_never_train(tiny, encoded, tmp_path):
    from smec_dist.recipes.adapter import Job

    cfg = load_config(None, overrides(tiny / "data", tmp_path / "out", encoded["cache"], "run.validation=holdout:0.25",
                                      "track.backend=none"))
    job = Job(cfg)
    job.setup()
    held = set(job.val_qids)
    assert len(held) == N_TRAIN_QUERIES // 4 and held <= set(job.ds.qrels["train"])
    rows = {q: i for i, q in enumerate(job.query_ids)}
    held_emb = job.queries[[rows[q] for q in held]]
    for setting in ("unsupervised-queries", "supervised"):
        data = job.train_set(setting)
        assert len(data.anchors) == N_TRAIN_QUERIES - len(held), setting
        assert not (torch.cdist(data.anchors, held_emb) < 1e-6).any(), setting  # no held-out query trains


@pytest.mark.parametrize("extra, needles", [
    (["run.validation=holdout:0.2", "run.supervised_split=test"], ["run.validation", "eval split"]),
    (["run.validation=holdout:0.2", "run.supervised_split=dev"], ["run.validation", "'dev'"]),
], ids=["eval-split", "absent-split"])
def test_bad_validation_split(tiny, encoded, tmp_path, capsys, extra, needles):
    out = tmp_path / "out"
    seed_stale_report(out)
    before = mtimes(encoded["cache"])
    rc = main(["run", *overrides(tiny / "data", out, encoded["cache"], *extra, settings="[unsupervised-queries]")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, *needles)
    assert_nothing_left(out)
    assert mtimes(encoded["cache"]) == before


def test_dims_wider_than_the_backbone(too_wide):
    assert too_wide["rc"] == 2, too_wide["stderr"]
    err = too_wide["stderr"]
    assert "Traceback" not in too_wide["stdout"] + err
    errors = [line for line in err.splitlines() if line.startswith("smec: error:")]
    assert len(errors) == 1, err
    assert "run.dims" in errors[0] and "512" in errors[0] and str(FULL_DIM) in errors[0]
    assert err.rstrip("\n").splitlines()[-1] == errors[0]  # the error is the last thing printed
    assert_nothing_left(too_wide["out"])
    cache = too_wide["cache"]
    if (cache / MANIFEST).exists():  # the check follows encoding: a complete cache is acceptable
        assert load_cache(cache).dim == FULL_DIM
    else:
        assert not cache.exists() or not any(cache.rglob("*.safetensors"))


def test_dims_wider_than_the_backbone_error_is_the_only_stderr_line(too_wide):
    assert_one_error_line(too_wide["rc"], too_wide["stdout"], too_wide["stderr"], "run.dims", FULL_DIM)


# --------------------------------------------------------------------------- smec config


@pytest.mark.parametrize("with_file", [False, True], ids=["defaults", "shipped-file"])
def test_config_prints_loadable_yaml(tmp_path, capsys, with_file):
    extra = ["run.dims=[64,32]", "train.lr=1", "model.pooling=cls"]
    argv = ["config"] + (["--config", str(ROOT / "configs" / "scifact-minilm.yaml")] if with_file else []) + extra
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.err == ""
    printed = yaml.safe_load(cap.out)
    assert set(printed) == {"data", "model", "cache", "run", "train", "e2e", "track", "suite"}
    path = tmp_path / "printed.yaml"
    path.write_text(cap.out, encoding="utf-8")
    expected = load_config(argv[2] if with_file else None, extra)
    assert load_config(path) == expected
    assert expected.run.dims == [64, 32] and expected.model.pooling == "cls"


# --------------------------------------------------------------------------- smec compress


def test_compress_with_a_trained_head(first_run, encoded, tmp_path, capsys):
    assert first_run["rc"] == 0, first_run["stderr"]
    head = first_run["out"] / "models" / "supervised" / "smec.safetensors"
    x = load_cache(encoded["cache"]).embeddings("corpus")
    src, dst = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, x)
    rc = main(["compress", "--head", str(head), "--input", str(src), "--dim", "16", "--output", str(dst)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    y = np.load(dst)
    assert y.shape == (N_DOCS, 16)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(y, CompressedModel.load(head).compress(x, 16), atol=1e-6)
    assert str(dst) in cap.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.npy"]  # no temp file left


def test_run_manifest_lists_heads_and_reports_and_catches_a_damaged_head(first_run, tmp_path, capsys):
    import shutil

    assert first_run["rc"] == 0, first_run["stderr"]
    listed = json.loads((first_run["out"] / "manifest.json").read_text())["files"]
    assert {"config.yaml", "results.json", "report.md", "plot.png", "models/supervised/smec.safetensors"} <= set(listed)
    run = tmp_path / "run"
    shutil.copytree(first_run["out"], run)
    head = run / "models" / "supervised" / "smec.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", np.ones((2, FULL_DIM), np.float32))
    rc = main(["compress", "--head", str(head), "--input", str(tmp_path / "x.npy"), "--dim", "16",
               "--output", str(tmp_path / "y.npy")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert f"{head}: does not match {run / 'manifest.json'}" in err and "sha256 differs" in err
    assert not (tmp_path / "y.npy").exists()


def test_compress_missing_head(tmp_path, capsys):
    src, dst = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, np.ones((3, FULL_DIM), dtype=np.float32))
    head = tmp_path / "no-such-head.safetensors"
    rc = main(["compress", "--head", str(head), "--input", str(src), "--dim", "16", "--output", str(dst)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, head)
    assert not dst.exists()


def test_compress_missing_input(random_head, tmp_path, capsys):
    src, dst = tmp_path / "nope.npy", tmp_path / "y.npy"
    rc = main(["compress", "--head", str(random_head), "--input", str(src), "--dim", "16", "--output", str(dst)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, src)
    assert not dst.exists()


def test_compress_wrong_width(random_head, tmp_path, capsys):
    src, dst = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, np.ones((3, 100), dtype=np.float32))
    rc = main(["compress", "--head", str(random_head), "--input", str(src), "--dim", "16", "--output", str(dst)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, FULL_DIM, 100)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.safetensors", "x.npy"]


def test_compress_wrong_width_names_the_input_file(random_head, tmp_path, capsys):
    src, dst = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, np.ones((3, 100), dtype=np.float32))
    rc = main(["compress", "--head", str(random_head), "--input", str(src), "--dim", "16", "--output", str(dst)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, src)


def test_compress_dim_not_in_head(random_head, tmp_path, capsys):
    src, dst = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, np.ones((3, FULL_DIM), dtype=np.float32))
    rc = main(["compress", "--head", str(random_head), "--input", str(src), "--dim", "8", "--output", str(dst)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, "8", "32, 16")
    assert not dst.exists()


def test_compress_damaged_head(tmp_path, capsys):
    src, dst, head = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "head.safetensors"
    np.save(src, np.ones((3, FULL_DIM), dtype=np.float32))
    head.write_bytes(b"not a safetensors file")
    rc = main(["compress", "--head", str(head), "--input", str(src), "--dim", "16", "--output", str(dst)])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, head)
    assert not dst.exists()


# --------------------------------------------------------------------------- smec compare


def test_compare_reports_every_method_with_the_metric_suite(tiny, encoded, capsys):
    from smec_dist.method.registry import COMPARE_METHODS

    assert encoded["rc"] == 0, encoded["err"]
    out = tiny / "compare"
    argv = ["compare", "--output", str(out),
            *overrides(tiny / "data", tiny / "unused", encoded["cache"], "run.k_values=[1,3,5,10]",
                       settings="[supervised]")]  # run.output_dir is overridden too: --output wins
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    methods = results["settings"]["supervised"]
    assert set(methods) == set(COMPARE_METHODS)  # every method, in one report
    # the single-resolution ablation is also scored at its own full width; trained methods at every dim
    assert set(methods["single"]) == {str(FULL_DIM)} | {str(d) for d in DIMS}
    assert set(methods["cmrl"]) == {str(d) for d in DIMS}
    for k in (1, 3, 5, 10):  # search_k=20 in these tests, so the suite stops at 10
        for name in ("nDCG", "MRR", "Recall", "MAP", "P"):
            assert f"{name}@{k}" in methods["smec"][str(DIMS[0])]
    assert not any("@100" in m for m in methods["smec"][str(DIMS[0])])
    for d in DIMS:
        assert methods["pca"][str(d)]["bytes/doc"] == 4 * d
        assert methods["cmrl"][str(d)]["ms/query"] > 0
    report = (out / "report.md").read_text()
    assert "index size and search time" in report and "| cmrl |" in report and "| single |" in report
    assert (out / "plot.png").is_file() and (out / "models" / "supervised" / "cmrl.safetensors").is_file()
    model = CompressedModel.load(out / "models" / "supervised" / "cmrl.safetensors")
    assert model.dims == DIMS


def test_compare_rejects_an_unknown_method(tiny, tmp_path, capsys):
    rc = main(["compare", "--methods", "smec,nope", *overrides(tiny / "data", tmp_path / "o", tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("smec: error: --methods: 'nope'")


def test_compare_defaults_and_what_wins():
    import argparse

    from smec_dist.cli import compare_overrides

    args = argparse.Namespace(config="configs/scifact-minilm.yaml", methods=None, output=None)
    cfg = load_config(args.config, compare_overrides(args, []))
    assert cfg.run.k_values == [1, 3, 5, 10, 100] and cfg.run.output_dir == "runs/scifact-minilm-compare"
    assert "cmrl" in cfg.run.methods and "single" in cfg.run.methods
    cfg = load_config(args.config, compare_overrides(args, ["run.search_k=10", "run.output_dir=x"]))
    assert cfg.run.k_values == [1, 3, 5, 10] and cfg.run.output_dir == "x"  # clipped; k=v wins
    args.output, args.methods = "y", "pca,cmrl"
    cfg = load_config(args.config, compare_overrides(args, ["run.output_dir=x"]))
    assert cfg.run.output_dir == "y" and cfg.run.methods == ["pca", "cmrl"]  # --output wins
