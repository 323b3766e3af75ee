"""``smec suite``: the adapter job over several datasets (tiny slices, real MiniLM)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from smec_dist.cli import main
from smec_dist.recipes.suite import suite_tables, targets
from test_cli import assert_one_error_line, build_tiny_beir


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory, data_dir) -> Path:
    """tiny (SciFact slice: train and test), testonly (the same slice without its train split)
    and sts (60 STS-B pairs per split)."""
    root = tmp_path_factory.mktemp("suite") / "data"
    build_tiny_beir(data_dir / "scifact", root / "tiny")
    shutil.copytree(root / "tiny", root / "testonly")
    (root / "testonly" / "qrels" / "train.tsv").unlink()
    (root / "sts").mkdir()
    for split in ("train", "test"):
        lines = (data_dir / "stsb" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (root / "sts" / f"{split}.tsv").write_text("\n".join(lines[:61]) + "\n", encoding="utf-8")
    return root


def _suite(data: Path, out: Path, *extra: str) -> int:
    return main(["suite", f"data.data_dir={data}", f"run.output_dir={out}", "suite.datasets=[tiny,testonly,sts]",
                 "run.dims=[32,16]", "train.epochs=1", "train.topk=10", "run.search_k=20", "run.k_values=[10,20]",
                 "run.max_anchors=30", "run.progress=false", "track.backend=none",
                 "run.methods=[full,bm25,truncation,pca,mrl,smec]", *extra])


def test_suite_runs_each_dataset_as_it_allows_and_reports_across(data, tmp_path, capsys, caplog):
    out = tmp_path / "suite"
    assert _suite(data, out) == 0
    printed = capsys.readouterr().out
    suite = json.loads((out / "suite.json").read_text())
    assert set(suite["datasets"]) == {"tiny", "testonly", "sts"}
    assert (out / "suite.md").is_file() and (out / "suite.png").read_bytes()[:4] == b"\x89PNG"
    tiny = json.loads((out / "tiny" / "results.json").read_text())
    testonly = json.loads((out / "testonly" / "results.json").read_text())
    sts = json.loads((out / "sts" / "results.json").read_text())
    # a set with a train split: train-query anchors, its judgments, validation from them
    assert tiny["meta"]["anchors"] == "split:train" and set(tiny["settings"]) >= {"supervised"}
    assert tiny["meta"]["validation_split"] == "train" and tiny["meta"]["n_validation_queries"] > 0
    # test only: half of the test queries are anchors (the other half is scored), validation
    # drawn from those anchors, no supervised setting
    assert testonly["meta"]["anchors"] == "holdout:0.5" and "supervised" not in testonly["settings"]
    assert testonly["meta"]["validation_split"] == "test" and testonly["meta"]["n_validation_queries"] > 0
    assert testonly["meta"]["n_queries"] + testonly["meta"]["n_anchor_queries"] + \
        testonly["meta"]["n_validation_queries"] == tiny["meta"]["n_queries"]
    assert sts["meta"]["metric"] == "Spearman" and set(sts["settings"]) == {"corpus-only", "supervised"}
    # the mean is over the retrieval sets only (STS-B's Spearman is reported beside it)
    cell = suite["tables"]["corpus-only"]["smec"]["16"]
    assert set(cell["datasets"]) == {"tiny", "testonly", "sts"} and cell["n"] == 2
    assert cell["mean"] == pytest.approx((cell["datasets"]["tiny"] + cell["datasets"]["testonly"]) / 2)
    full = suite["tables"]["corpus-only"]["full"]["384"]["datasets"]["tiny"]
    assert cell["retention"]["tiny"] == pytest.approx(100 * cell["datasets"]["tiny"] / full)
    assert suite["validation"]["unsupervised-queries"]["smec"]["16"]["n"] == 2
    assert "SMEC - PCA" in (out / "suite.md").read_text() and "mean nDCG@10" in printed

    # resumable: a second run redoes nothing
    with caplog.at_level(logging.INFO):
        assert _suite(data, out) == 0
    assert caplog.text.count("finished before with this config") == 3
    assert "training" not in caplog.text
    # another setting for every set: each is run again (its folder replaced), the suite too
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _suite(data, out, "train.lr=0.001") == 2  # the suite folder holds another suite's config
    assert "holds a suite run with another config" in capsys.readouterr().err
    assert _suite(data, out, "train.lr=0.001", "--overwrite") == 0


def test_targets_compare_smec_with_pca_and_the_best_baseline():
    def results(smec, pca, mrl, linear, n):
        return {"meta": {"full_dim": 64, "metric": "nDCG@10", "n_queries": n},
                "settings": {"unsupervised-queries": {
                    "full": {"64": {"nDCG@10": 0.5}}, "smec": {"16": {"nDCG@10": smec}},
                    "pca": {"16": {"nDCG@10": pca}}, "mrl": {"16": {"nDCG@10": mrl}},
                    "linear": {"16": {"nDCG@10": linear}}}}}
    per = {"a": results(0.40, 0.35, 0.38, 0.39, 150), "b": results(0.30, 0.31, 0.29, 0.28, 20)}
    result = {"tables": suite_tables(per),
              "datasets": {n: {"metric": "nDCG@10", "n_queries": r["meta"]["n_queries"]} for n, r in per.items()}}
    rows = {(r["dim"], r["where"]): r for r in targets(result)}
    assert set(rows) == {(16, "mean"), (16, "a")}  # b has fewer than 100 scored queries: not judged
    assert rows[(16, "mean")]["vs_pca"] == pytest.approx(0.02) and rows[(16, "a")]["vs_best_baseline"] == pytest.approx(0.01)


def test_suite_needs_datasets(tmp_path, capsys):
    rc = main(["suite", f"run.output_dir={tmp_path / 's'}"])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, "suite.datasets")
