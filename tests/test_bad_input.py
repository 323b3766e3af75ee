"""The bad-input matrix: every loader and the config, driven through the real ``smec`` CLI.

Each case breaks one input (a dataset file, the config, a model path, a head or .npy for
``smec compress``, the embedding cache, a download) and runs the cheapest command that
reads it. Every case must end with

* exit status 2 and exactly one stderr line, ``smec: error: ...``, naming the file (with
  the line number) or the config key or id at fault, and no traceback;
* nothing written: no ``run.output_dir``, no cache folder (or the broken cache untouched),
  no ``--output`` file, no partial download.

Dataset cases run with a model path that does not exist, so a case only passes when the
dataset is validated before any model is looked at, let alone loaded or run. The datasets
are a handful of hand-written lines: the whole matrix takes seconds.

Not errors, by design: a document with empty title and text is kept with a warning (real
collections have them, see ``load_corpus``; ``test_empty_documents_are_kept``), and a cache
without a manifest (an interrupted encoding) is resumed, not refused (tests/test_cache.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from smec_dist.backbone import identity_key, model_identity
from smec_dist.cache import MANIFEST, build_cache, shard_name
from smec_dist.cli import main
from smec_dist.data import download as download_mod
from smec_dist.data import load_beir
from smec_dist.method.smrl import SMECHead
from smec_dist.method.export import save_head
from tests.test_cli import assert_one_error_line

ROOT = Path(__file__).resolve().parents[1]
DATASET = "tiny"
NO_MODEL = "/nonexistent/model"  # data cases: any model access fails, so data must be checked first
FULL_DIM = 8  # the random head's and the fake cache's width
MINILM_WIDTH = 384

CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "first document"},
    {"_id": "d2", "title": "Beta", "text": "second document"},
    {"_id": "d3", "title": "", "text": "third document"},
    {"_id": "d4", "title": "Delta", "text": "fourth document"},
]
QUERIES = [
    {"_id": "q1", "text": "first query"},
    {"_id": "q2", "text": "second query"},
    {"_id": "q3", "text": "third query"},
]
QRELS = {"train": [("q1", "d1", 1)], "test": [("q2", "d2", 1), ("q3", "d3", 1)]}
QRELS_HEADER = "query-id\tcorpus-id\tscore"


# --------------------------------------------------------------------------- helpers


def write_beir(root: Path) -> Path:
    """A tiny valid BEIR folder (4 docs, 3 queries, train and test qrels)."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES), encoding="utf-8")
    for split, rows in QRELS.items():
        lines = [QRELS_HEADER] + ["\t".join(map(str, r)) for r in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime) of every file below ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def set_line(path: Path, lineno: int, new: str | bytes) -> None:
    """Replaces line ``lineno`` (1-based) of a file, keeping the others byte for byte."""
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = new if isinstance(new, bytes) else new.encode("utf-8")
    path.write_bytes(b"\n".join(lines))


class Bad(NamedTuple):
    needles: list  # what the error line must name
    extra: list = []  # overrides the case adds to the command line


Breaker = Callable[[Path, Path], Bad]  # (dataset folder, tmp_path) -> what to expect


def line_case(name: str, lineno: int, new: str | bytes, *needles) -> Breaker:
    """Line ``lineno`` of ``name`` (in the dataset) becomes ``new``; the error names file:line."""
    def breaker(ds: Path, tmp: Path) -> Bad:
        set_line(ds / name, lineno, new)
        return Bad([f"{ds / name}:{lineno}:", *needles])
    return breaker


def file_case(name: str, content: str | bytes | None, *needles) -> Breaker:
    """``name`` gets ``content`` (``None``: deleted); the error names the file."""
    def breaker(ds: Path, tmp: Path) -> Bad:
        path = ds / name
        if content is None:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return Bad([path, *needles])
    return breaker


# --------------------------------------------------------------------------- the matrix: dataset files

C, Q, T = "corpus.jsonl", "queries.jsonl", "qrels/test.tsv"

# Read by both `smec encode` and `smec run`.
DATA_CASES: dict[str, Breaker] = {
    # corpus.jsonl
    "corpus-malformed-json": line_case(C, 3, '{"_id": "d3", "text": "no closing brace"', "malformed JSON"),
    "corpus-not-utf8": line_case(C, 2, b'{"_id": "d2", "text": "caf\xe9"}', "not valid UTF-8"),
    "corpus-not-object": line_case(C, 2, '["d2", "second document"]', "JSON object", "list"),
    "corpus-missing-id": line_case(C, 2, '{"title": "Beta", "text": "second document"}', "missing '_id'"),
    "corpus-id-not-string": line_case(C, 2, '{"_id": 2, "text": "second document"}', "'_id'", "string"),
    "corpus-duplicate-id": line_case(C, 4, '{"_id": "d2", "text": "again"}', "duplicate id 'd2'", "line 2"),
    "corpus-missing-text": line_case(C, 2, '{"_id": "d2", "title": "Beta"}', "missing 'text'"),
    "corpus-title-not-string": line_case(C, 2, '{"_id": "d2", "title": 5, "text": "x"}', "'title'", "string"),
    "corpus-empty-file": file_case(C, "", "no documents"),
    "corpus-blank-lines-only": file_case(C, "\n  \n\n", "no documents"),
    "corpus-missing-file": file_case(C, None, "not found"),
    # queries.jsonl
    "queries-malformed-json": line_case(Q, 2, '{"_id": "q2", "text": "x",}', "malformed JSON"),
    "queries-not-utf8": line_case(Q, 3, b'{"_id": "q3", "text": "\xff\xfe"}', "not valid UTF-8"),
    "queries-not-object": line_case(Q, 1, '"q1"', "JSON object", "str"),
    "queries-missing-id": line_case(Q, 2, '{"text": "second query"}', "missing '_id'"),
    "queries-empty-id": line_case(Q, 2, '{"_id": "", "text": "second query"}', "'_id'", "non-empty"),
    "queries-duplicate-id": line_case(Q, 3, '{"_id": "q1", "text": "again"}', "duplicate id 'q1'", "line 1"),
    "queries-missing-text": line_case(Q, 2, '{"_id": "q2"}', "missing 'text'"),
    "queries-empty-text": line_case(Q, 2, '{"_id": "q2", "text": "   "}', "empty query text", "'q2'"),
    "queries-empty-file": file_case(Q, "", "no queries"),
    "queries-missing-file": file_case(Q, None, "not found"),
    # qrels/<split>.tsv
    "qrels-two-columns": line_case(T, 3, "q3\td3", "3 tab-separated columns", "got 2"),
    "qrels-four-columns": line_case(T, 3, "q3\td3\t1\textra", "got 4"),
    "qrels-score-not-integer": line_case(T, 3, "q3\td3\thigh", "'high'", "not an integer"),
    "qrels-score-float": line_case(T, 2, "q2\td2\t0.5", "'0.5'", "not an integer"),
    # judgments naming absent ids are skipped with a warning (test_data); none left is an error
    "qrels-only-absent-queries": file_case(T, "query-id\tcorpus-id\tscore\nq9\td3\t1\n", "no judgment left",
                                           "1 name a query absent from queries.jsonl (first: line 2, 'q9')"),
    "qrels-only-absent-docs": file_case(T, "query-id\tcorpus-id\tscore\nq1\td9\t1\nq2\td8\t1\n",
                                        "no judgment left", "2 name a document absent from corpus.jsonl"),
    "qrels-missing-header": line_case(T, 1, "q1\td1\t1", "header"),
    "qrels-wrong-header": line_case(T, 1, "qid\tdocid\tscore", "header", "'qid"),
    "qrels-not-utf8": line_case(T, 2, b"q2\td\xe92\t1", "not valid UTF-8"),
    "qrels-empty-file": file_case(T, "", "empty file"),
    "qrels-header-only": file_case(T, QRELS_HEADER + "\n", "no judgment left after the header"),
    "qrels-folder-missing": file_case("qrels", None, "not found"),
    # the dataset folder
    "dataset-path-missing": lambda ds, tmp: Bad([tmp / "no" / "such"], [f"data.dataset={tmp / 'no' / 'such'}"]),
    "data-dir-missing": lambda ds, tmp: Bad([tmp / "no-data-dir", "downloads are off"],
                                           [f"data.data_dir={tmp / 'no-data-dir'}"]),
}


def _no_split_files(ds: Path, tmp: Path) -> Bad:
    for tsv in (ds / "qrels").iterdir():
        tsv.unlink()
    return Bad([ds / "qrels", "no <split>.tsv"])


def _dataset_folder_missing(ds: Path, tmp: Path) -> Bad:
    shutil.rmtree(ds)  # with downloads off (HF_HUB_OFFLINE=1): a clear error, no network, no hang
    return Bad([f"'{DATASET}'", ds.parent, "downloads are off"])


DATA_CASES["qrels-no-split-files"] = _no_split_files
DATA_CASES["dataset-folder-missing"] = _dataset_folder_missing


def _anchor_file(content: str, *needles, lineno: int | None = None) -> Breaker:
    def breaker(ds: Path, tmp: Path) -> Bad:
        path = tmp / "anchors.jsonl"
        path.write_text(content, encoding="utf-8")
        return Bad([f"{path}:{lineno}:" if lineno else path, *needles], [f"run.anchors=file:{path}"])
    return breaker


# Checked by `smec run` only (`smec encode` does not need them), still before any model.
RUN_CASES: dict[str, Breaker] = {
    "eval-split-file-missing": file_case(T, None, "data.eval_split", "'test'"),
    "eval-split-unknown": lambda ds, tmp: Bad(["data.eval_split", "'dev'", ds / "qrels" / "dev.tsv"],
                                             ["data.eval_split=dev"]),
    "supervised-split-unknown": lambda ds, tmp: Bad(["run.supervised_split", "'dev'", ds / "qrels" / "dev.tsv"],
                                                   ["run.supervised_split=dev", "run.settings=[supervised]"]),
    "anchors-split-unknown": lambda ds, tmp: Bad(["run.anchors", "'dev'"], ["run.anchors=split:dev"]),
    "anchors-spec-malformed": lambda ds, tmp: Bad(["run.anchors", "'bogus'"], ["run.anchors=bogus"]),
    "anchors-file-missing": lambda ds, tmp: Bad(["run.anchors", tmp / "absent.jsonl", "not found"],
                                               [f"run.anchors=file:{tmp / 'absent.jsonl'}"]),
    "anchors-file-malformed": _anchor_file('{"_id": "a1", "text": "x"}\n{"_id": "a2"\n', "malformed JSON", lineno=2),
    "anchors-file-duplicate-id": _anchor_file('{"_id": "a1", "text": "x"}\n{"_id": "a1", "text": "y"}\n',
                                              "duplicate id 'a1'", lineno=2),
    "anchors-file-empty": _anchor_file("", "no queries"),
}


def _data_argv(ds: Path, tmp: Path, extra: list[str], model: str = NO_MODEL) -> tuple[list[str], Path, Path]:
    out, cache = tmp / "out", tmp / "cache"
    argv = [f"data.data_dir={ds.parent}", f"data.dataset={DATASET}", f"run.output_dir={out}", f"cache.dir={cache}",
            f"model.name={model}", "run.dims=[4,2]", "run.progress=false", *extra]
    return argv, out, cache


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing dataset must not be downloaded
    return write_beir(tmp_path / "data" / DATASET)


def test_the_tiny_dataset_is_valid(dataset: Path) -> None:
    """The base every case breaks loads cleanly, so each error is the broken line's."""
    ds = load_beir(dataset)
    assert len(ds.corpus) == 4 and len(ds.queries) == 3 and ds.splits == ["test", "train"]


@pytest.mark.parametrize("command", ["encode", "run"])
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_dataset(dataset: Path, tmp_path: Path, capsys, case: str, command: str) -> None:
    bad = DATA_CASES[case](dataset, tmp_path)
    argv, out, cache = _data_argv(dataset, tmp_path, bad.extra)
    rc, stdout, stderr = run_cli([command, *argv], capsys)
    line = assert_one_error_line(rc, stdout, stderr, *bad.needles)
    assert NO_MODEL not in line, "the model was looked at before the dataset was checked"
    assert stdout == ""
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_input(dataset: Path, tmp_path: Path, capsys, case: str) -> None:
    bad = RUN_CASES[case](dataset, tmp_path)
    argv, out, cache = _data_argv(dataset, tmp_path, bad.extra)
    rc, stdout, stderr = run_cli(["run", *argv], capsys)
    line = assert_one_error_line(rc, stdout, stderr, *bad.needles)
    assert NO_MODEL not in line, "the model was looked at before the run's inputs were checked"
    assert stdout == ""
    assert not out.exists() and not cache.exists()


def test_empty_documents_are_kept(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not an error, by design: a document with empty title and text stays (Cranfield has two,
    and dropping them would change the id set the qrels refer to), with one warning."""
    set_line(dataset / C, 2, '{"_id": "d2", "title": "", "text": " "}')
    ds = load_beir(dataset)
    assert ds.doc_ids() == ["d1", "d2", "d3", "d4"]
    assert any("empty title and text" in r.getMessage() for r in caplog.records)


def test_real_scifact_still_loads(data_dir: Path) -> None:
    """Every rule above holds on the real data: all qrels rows point to known queries and docs."""
    ds = load_beir(data_dir / "scifact")
    assert len(ds.corpus) == 5183 and len(ds.queries) == 1109 and ds.splits == ["test", "train"]


# --------------------------------------------------------------------------- the matrix: models


def _model_folder(config: str | None) -> Callable[[Path], tuple[str, list]]:
    def make(tmp: Path) -> tuple[str, list]:
        folder = tmp / "my-model"
        folder.mkdir()
        if config is not None:
            (folder / "config.json").write_text(config, encoding="utf-8")
        return str(folder), [folder, "config.json"]
    return make


MODEL_CASES: dict[str, Callable[[Path], tuple[str, list]]] = {
    "model-path-missing": lambda tmp: (NO_MODEL, [NO_MODEL, "no such folder"]),
    "model-hub-id-offline": lambda tmp: ("some-org/some-model", ["'some-org/some-model'"]),
    "model-folder-without-config": _model_folder(None),
    "model-config-not-json": _model_folder("{not json"),
}


@pytest.mark.parametrize("command", ["encode", "run"])
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model(dataset: Path, tmp_path: Path, capsys, case: str, command: str) -> None:
    model, needles = MODEL_CASES[case](tmp_path)
    argv, out, cache = _data_argv(dataset, tmp_path, [], model=model)
    rc, stdout, stderr = run_cli([command, *argv], capsys)
    assert_one_error_line(rc, stdout, stderr, *needles)
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("dims", ["[384,16]", "[512,256]"], ids=["equal-to-width", "wider"])
def test_dims_not_below_the_model_width(dataset: Path, tmp_path: Path, capsys, dims: str) -> None:
    """Found from the model's config alone (no weights), before anything is encoded."""
    argv, out, cache = _data_argv(dataset, tmp_path, [f"run.dims={dims}"], model="minilm")
    rc, stdout, stderr = run_cli(["run", *argv], capsys)
    assert_one_error_line(rc, stdout, stderr, *["run.dims", dims[1:4], MINILM_WIDTH])
    assert not out.exists() and not cache.exists()


# --------------------------------------------------------------------------- the matrix: config

# name -> (YAML file content or None for no --config, overrides, needles; "{F}" is the file)
CONFIG_CASES: dict[str, tuple[str | bytes | None, list[str], list[str]]] = {
    "yaml-unknown-section": ("trian:\n  epochs: 3\n", [], ["{F}", "unknown config key 'trian'"]),
    "yaml-unknown-key": ("train:\n  epoch: 3\n", [], ["{F}", "unknown config key 'train.epoch'"]),
    "yaml-wrong-type": ("train:\n  epochs: many\n", [], ["{F}", "train.epochs", "expected int", "'many'"]),
    "yaml-bool-expected": ("run:\n  progress: 3\n", [], ["{F}", "run.progress", "true or false"]),
    "yaml-list-expected": ("run:\n  dims: 32\n", [], ["{F}", "run.dims", "expected a list"]),
    "yaml-section-not-mapping": ("train: 5\n", [], ["{F}", "'train'", "mapping"]),
    "yaml-top-level-not-mapping": ("- run\n- train\n", [], ["{F}", "mapping of sections"]),
    "yaml-malformed": ("run:\n  dims: [32, 16]\ntrain:\n\tepochs: 3\n", [], ["{F}:4:", "not valid YAML"]),
    "yaml-unclosed-bracket": ("run:\n  dims: [32, 16\n  seeds: [0]\n", [], ["{F}:3:", "not valid YAML"]),
    "yaml-not-utf8": (b"run:\n  output_dir: caf\xe9\n", [], ["{F}:2:", "not valid UTF-8"]),
    "yaml-dims-increasing": ("run:\n  dims: [16, 32]\n", [], ["{F}", "run.dims", "strictly decreasing"]),
    "yaml-bad-choice": ("model:\n  pooling: max\n", [], ["{F}", "model.pooling", "'max'"]),
    "config-file-missing": (None, ["--config", "{tmp}/absent.yaml"], ["{tmp}/absent.yaml", "not found"]),
    "config-file-is-a-folder": (None, ["--config", "{tmp}"], ["{tmp}", "cannot read"]),
    "override-no-equals": (None, ["train.epochs"], ["'train.epochs'", "section.key=value"]),
    "override-unknown-key": (None, ["train.epoch=3"], ["command line", "unknown config key 'train.epoch'"]),
    "override-unknown-section": (None, ["trian.epochs=3"], ["command line", "unknown config key 'trian'"]),
    "override-wrong-type": (None, ["train.epochs=many"], ["command line", "train.epochs", "expected int"]),
    "override-bad-yaml-value": (None, ["run.dims=[32,16"], ["'run.dims=[32,16'", "not valid YAML"]),
    "override-section-as-value": (None, ["train=5"], ["'train'", "mapping"]),
    "override-conflict": (None, ["run=1", "run.dims=[4]"], ["'run.dims=[4]'", "conflicts"]),
    "dims-increasing": (None, ["run.dims=[16,32]"], ["run.dims", "strictly decreasing"]),
    "dims-equal": (None, ["run.dims=[16,16]"], ["run.dims", "strictly decreasing"]),
    "dims-zero": (None, ["run.dims=[32,0]"], ["run.dims", "0", "positive"]),
    "dims-negative": (None, ["run.dims=[-8]"], ["run.dims", "-8", "positive"]),
    "dims-empty": (None, ["run.dims=[]"], ["run.dims", "at least one"]),
    "dims-not-integer": (None, ["run.dims=[32,16.5]"], ["run.dims[1]", "expected int", "16.5"]),
    "negative-value": (None, ["train.lr=-1"], ["train.lr", "> 0"]),
    "unknown-setting": (None, ["run.settings=[weakly-supervised]"], ["run.settings", "'weakly-supervised'"]),
    "unknown-method": (None, ["run.methods=[smec,opq]"], ["run.methods", "'opq'"]),
    "unknown-cache-dtype": (None, ["cache.dtype=int8"], ["cache.dtype", "'int8'"]),
    "lr-nan": (None, ["train.lr=.nan"], ["train.lr", "finite", "nan"]),
    "lr-inf": (None, ["train.lr=.inf"], ["train.lr", "finite", "inf"]),
    "temperature-nan": (None, ["train.temperature=.nan"], ["train.temperature", "finite"]),
    "yaml-nan": ("run:\n  supervised_temperature: .nan\n", [], ["{F}", "run.supervised_temperature", "finite"]),
    "weight-neg-inf": (None, ["run.supervised_infonce_weight=-.inf"], ["run.supervised_infonce_weight", "finite"]),
    "output-dir-empty": (None, ["run.output_dir="], ["run.output_dir", "not a run folder"]),
    "removed-key": (None, ["e2e.infonce_weight=1"], ["e2e.infonce_weight", "removed", "run.supervised_infonce_weight"]),
    "setting-temperature-zero": (None, ["run.corpus_only_temperature=0"], ["run.corpus_only_temperature", "> 0"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(tmp_path: Path, capsys, case: str) -> None:
    content, args, needles = CONFIG_CASES[case]
    path = tmp_path / "bad.yaml"
    argv = ["config"]
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        argv += ["--config", str(path)]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    needles = [n.replace("{F}", str(path)).replace("{tmp}", str(tmp_path)) for n in needles]
    rc, stdout, stderr = run_cli(argv, capsys)
    assert_one_error_line(rc, stdout, stderr, *needles)
    assert stdout == ""


@pytest.mark.parametrize("command", ["run", "encode", "train", "eval"])
def test_every_config_command_stops_on_a_bad_key(dataset: Path, tmp_path: Path, capsys, command: str) -> None:
    argv, out, cache = _data_argv(dataset, tmp_path, ["train.epoch=3"], model="minilm")
    rc, stdout, stderr = run_cli([command, *argv], capsys)
    assert_one_error_line(rc, stdout, stderr, *["train.epoch"])
    assert stdout == ""
    assert not out.exists() and not cache.exists()


# --------------------------------------------------------------------------- the matrix: smec compress


@pytest.fixture
def head(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_head(SMECHead(FULL_DIM, [4, 2]), tmp_path / "head.safetensors")


def _npy(array: np.ndarray) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        np.save(path, array, allow_pickle=array.dtype == object)
        return path
    return make


def _raw(data: bytes) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return make


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _truncated(path: Path) -> Path:
    np.save(path, np.ones((3, FULL_DIM), np.float32))
    path.write_bytes(path.read_bytes()[:-20])
    return path


GOOD_INPUT = _npy(np.ones((3, FULL_DIM), np.float32))

# name -> (input maker or None for a missing file, head: "good" / "missing" / bytes, dim, output name, needles)
# "{in}", "{head}" and "{out}" in the needles are the paths.
COMPRESS_CASES = {
    "head-missing": (GOOD_INPUT, "missing", 4, "y.npy", ["{head}", "no such head file"]),
    "head-not-safetensors": (GOOD_INPUT, b"not a safetensors file", 4, "y.npy", ["{head}", "not a readable smec head"]),
    "head-without-layout": (GOOD_INPUT, "foreign", 4, "y.npy", ["{head}", "not a readable smec head"]),
    "input-missing": (None, "good", 4, "y.npy", ["{in}", "no such file"]),
    "input-not-npy": (_raw(b"0.1 0.2 0.3\n"), "good", 4, "y.npy", ["{in}", "not a numeric .npy"]),
    "input-truncated": (_truncated, "good", 4, "y.npy", ["{in}", "not a numeric .npy"]),
    "input-object-array": (_npy(np.array([{"a": 1}], dtype=object)), "good", 4, "y.npy", ["{in}", "not a numeric"]),
    "input-one-dimensional": (_npy(np.ones(FULL_DIM, np.float32)), "good", 4, "y.npy", ["{in}", f"(n, {FULL_DIM})"]),
    "input-wrong-width": (_npy(np.ones((3, 5), np.float32)), "good", 4, "y.npy",
                          ["{in}", "(3, 5)", f"(n, {FULL_DIM})"]),
    "dim-not-in-head": (GOOD_INPUT, "good", 3, "y.npy", ["dim 3", "[4, 2]"]),
    "input-empty-file": (_raw(b""), "good", 4, "y.npy", ["{in}"]),
    "input-strings": (_npy(np.array([["a"] * FULL_DIM] * 3)), "good", 4, "y.npy", ["{in}", "numeric"]),
    "input-not-finite": (_npy(np.full((3, FULL_DIM), np.nan, np.float32)), "good", 4, "y.npy", ["{in}", "finite"]),
    "input-is-a-folder": (_folder, "good", 4, "y.npy", ["{in}"]),
    "output-folder-missing": (GOOD_INPUT, "good", 4, "no-dir/y.npy", ["{out}"]),
    "input-npz-archive": (lambda p: (np.savez(p.with_suffix(".npz"), a=np.ones((3, FULL_DIM))), p.with_suffix(".npz"))[1],
                          "good", 4, "y.npy", ["{in}", ".npz archive (a)", "np.save"]),
}


@pytest.mark.parametrize("spec", list(COMPRESS_CASES.values()), ids=list(COMPRESS_CASES))
def test_bad_compress(tmp_path: Path, head: Path, capsys, spec) -> None:
    make_input, head_kind, dim, out_name, needles = spec
    src = tmp_path / "x.npy"
    if make_input is not None:
        src = make_input(src)
    if head_kind == "missing":
        head = tmp_path / "no-head.safetensors"
    elif head_kind == "foreign":  # a valid safetensors file that is not a head (e.g. a cache shard)
        head = tmp_path / "shard.safetensors"
        save_file({"emb": np.ones((2, FULL_DIM), np.float32)}, str(head))
    elif isinstance(head_kind, bytes):
        head = tmp_path / "damaged.safetensors"
        head.write_bytes(head_kind)
    dst = tmp_path / out_name
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, stdout, stderr = run_cli(["compress", "--head", str(head), "--input", str(src), "--dim", str(dim),
                                  "--output", str(dst)], capsys)
    needles = [n.replace("{in}", str(src)).replace("{head}", str(head)).replace("{out}", str(dst)) for n in needles]
    assert_one_error_line(rc, stdout, stderr, *needles)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a file was left behind"


# --------------------------------------------------------------------------- the matrix: embedding cache


class FakeEncoder:
    """Stands in for a backbone when building a cache (the cache format is what is tested)."""

    dim, pooling, normalize, max_length, append_eos = FULL_DIM, "mean", True, 256, False

    def encode(self, texts, batch_size=64, progress=False, desc=""):
        rng = np.random.default_rng(len(texts))
        x = rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sealed_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny dataset and a complete cache of it, recorded for model ``minilm`` with the
    config defaults, so that `smec run` would reuse it as it is."""
    base = tmp_path_factory.mktemp("sealed")
    ds = load_beir(write_beir(base / "data" / DATASET))
    parts = {"corpus": (ds.doc_ids(), ds.doc_texts()), "queries": (list(ds.queries), list(ds.queries.values()))}
    minilm_shaped = type("MiniLMShaped", (FakeEncoder,), {"dim": 384})()  # what minilm's cache holds
    build_cache(base / "cache", minilm_shaped, "minilm", parts, dataset_path=str(ds.root), dtype="float32",
                shard_size=2, progress=False, model_id=identity_key(model_identity("minilm")), model_dtype="float32")
    return base / "data" / DATASET, base / "cache"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-8])  # the header intact, the data short (a crash mid-write)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


SHARD = f"corpus/{shard_name(1)}"

# name -> (file in the cache, what to do to it, needles besides the file)
CACHE_CASES = {
    "manifest-not-json": (MANIFEST, lambda p: p.write_text("{not json", encoding="utf-8"), ["malformed manifest JSON"]),
    "manifest-not-object": (MANIFEST, lambda p: p.write_text("[]", encoding="utf-8"), ["not a JSON object"]),
    "manifest-key-missing": (MANIFEST, lambda p: p.write_text(json.dumps(
        {k: v for k, v in json.loads(p.read_text()).items() if k != "dim"})), ["key 'dim' missing"]),
    "shard-truncated": (SHARD, _truncate, ["truncated"]),
    "shard-emptied": (SHARD, lambda p: p.write_bytes(b""), ["not a safetensors file"]),
    "shard-missing": (SHARD, Path.unlink, ["missing"]),
    "ids-missing": ("queries/ids.json", Path.unlink, ["missing"]),
}


def _break_cache(sealed_cache, tmp_path: Path, target: str, damage) -> tuple[Path, Path, Path]:
    ds_src, cache_src = sealed_cache
    ds, cache = tmp_path / "data" / DATASET, tmp_path / "cache"
    shutil.copytree(ds_src, ds)
    shutil.copytree(cache_src, cache)
    damage(cache / target)
    return ds, cache, cache / target


@pytest.mark.parametrize("command", ["encode", "run"])
@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_damaged_cache(sealed_cache, tmp_path: Path, capsys, case: str, command: str) -> None:
    """A damaged sealed cache is named (the file at fault), before a model is loaded, and left as it is."""
    target, damage, needles = CACHE_CASES[case]
    ds, cache, path = _break_cache(sealed_cache, tmp_path, target, damage)
    before = files_of(cache)
    out = tmp_path / "out"
    # encode: a model that does not exist proves the cache is checked before the model is
    # touched; run: minilm, whose width is read from its config before the cache is opened
    model = NO_MODEL if command == "encode" else "minilm"
    rc, stdout, stderr = run_cli([command, f"data.data_dir={ds.parent}", f"data.dataset={DATASET}",
                                  f"cache.dir={cache}", f"run.output_dir={out}", f"model.name={model}",
                                  "run.dims=[4,2]", "run.progress=false"], capsys)
    assert_one_error_line(rc, stdout, stderr, *[path, *needles])
    assert files_of(cache) == before, "the damaged cache was modified"
    assert not out.exists()


def test_corrupted_shard_is_caught_by_its_checksum(sealed_cache, tmp_path: Path, capsys) -> None:
    """Same size, one byte changed: only the sha256 tells, and `smec run` checks it on load."""
    ds, cache, path = _break_cache(sealed_cache, tmp_path, SHARD, _flip_last_byte)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(["run", f"data.data_dir={ds.parent}", f"data.dataset={DATASET}",
                                  f"cache.dir={cache}", f"run.output_dir={out}", "model.name=minilm",
                                  "run.dims=[4,2]", "run.progress=false"], capsys)
    assert_one_error_line(rc, stdout, stderr, *[path, "sha256"])
    assert not out.exists()


# --------------------------------------------------------------------------- the matrix: downloads


def test_download_bad_name(tmp_path: Path, capsys) -> None:
    rc, stdout, stderr = run_cli(["download", "../evil", "--data-dir", str(tmp_path / "d")], capsys)
    assert_one_error_line(rc, stdout, stderr, *["'../evil'"])
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", ["download", "run"])
def test_download_unreachable(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Downloads on but the archive cannot be fetched (no network): one line naming the URL,
    nothing left in the data dir, and no model touched."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("SMEC_OFFLINE", "0")
    monkeypatch.setattr(download_mod, "BEIR_URL", (tmp_path / "mirror").as_uri() + "/{name}.zip")
    data = tmp_path / "data"
    data.mkdir()
    url = (tmp_path / "mirror" / f"{DATASET}.zip").as_uri()
    if command == "download":
        argv = ["download", DATASET, "--data-dir", str(data)]
    else:
        argv = ["run", f"data.data_dir={data}", f"data.dataset={DATASET}", f"run.output_dir={tmp_path / 'out'}",
                f"cache.dir={tmp_path / 'cache'}", f"model.name={NO_MODEL}"]
    rc, stdout, stderr = run_cli(argv, capsys)
    assert_one_error_line(rc, stdout, stderr, *[url, "download failed"])
    assert list(data.iterdir()) == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- the real command line


@pytest.mark.parametrize("kind", ["config", "dataset"])
def test_real_process_prints_one_line(tmp_path: Path, kind: str) -> None:
    """Outside pytest's log capture: ``python -m smec_dist.cli`` prints the error line alone
    (at --log-level WARNING) and exits with 2."""
    if kind == "config":
        argv, needles = ["config", "train.epoch=3"], ["train.epoch"]
    else:
        ds = write_beir(tmp_path / "data" / DATASET)
        set_line(ds / C, 3, "{oops")
        argv, needles = ["encode", *_data_argv(ds, tmp_path, [])[0]], [f"{ds / C}:3:", "malformed JSON"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "smec_dist.cli", "--log-level", "WARNING", *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, *needles)
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- the matrix: the rest of the CLI


def test_unknown_log_level_is_one_line(capsys) -> None:
    rc, stdout, stderr = run_cli(["--log-level", "LOUD", "config"], capsys)
    assert_one_error_line(rc, stdout, stderr, "--log-level", "'LOUD'", "DEBUG, INFO, WARNING")


@pytest.mark.parametrize("where", ["cache", "toy"])
def test_an_unwritable_folder_is_one_line_and_writes_nothing(dataset: Path, tmp_path: Path, capsys, where) -> None:
    """A folder that cannot be created (its parent is a file; running as root, permissions would
    not stop us): one line naming it, nothing written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    if where == "toy":
        argv = ["toy", "--output", str(blocker / "toy")]
    else:
        argv, out, _ = _data_argv(dataset, tmp_path, [], model="minilm")
        argv = ["encode", *[a for a in argv if not a.startswith("cache.dir=")], f"cache.dir={blocker / 'cache'}"]
    rc, stdout, stderr = run_cli(argv, capsys)
    assert_one_error_line(rc, stdout, stderr, str(blocker))
    assert blocker.read_text() == "not a folder\n"


def test_an_output_dir_that_is_a_file(dataset: Path, tmp_path: Path, capsys) -> None:
    argv, out, cache = _data_argv(dataset, tmp_path, [], model="minilm")
    out.write_text("a file\n")
    rc, stdout, stderr = run_cli(["run", *argv], capsys)
    assert_one_error_line(rc, stdout, stderr, "run.output_dir", str(out), "is a file")
    assert out.read_text() == "a file\n" and not cache.exists()


def test_a_bad_wandb_key_without_a_mode_is_one_line(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """WANDB_API_KEY set, WANDB_MODE not: auto goes online, which fails here (no network): one line
    saying what to set, exit 2, no run folder (a real process: W&B prints its own lines too)."""
    argv, out, cache = _data_argv(dataset, tmp_path, ["track.backend=wandb", "track.mode=auto"], model="minilm")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567", WANDB_INIT_TIMEOUT="3",
               WANDB_SILENT="true", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "smec_dist.cli", "run", *argv], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("smec: error: track: W&B could not start a run") and "WANDB_MODE=offline" in last
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))
