"""report.py: files, round trip, markdown tables, PNG, validation errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from smec_dist.errors import SmecError
from smec_dist.report import (
    HEADLINE,
    combined_table_markdown,
    load_results,
    order_methods,
    print_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(ndcg: float) -> dict[str, float]:
    return {"nDCG@10": ndcg, "MRR@10": ndcg + 0.05, "Recall@100": ndcg + 0.2, "MAP@100": ndcg - 0.05}


def _results() -> dict:
    compressed = {
        "truncation": {"192": 0.60, "96": 0.52, "48": 0.40, "24": 0.25},
        "pca": {"192": 0.63, "96": 0.58, "48": 0.47},  # no 24: must show "—"
        "smec": {"192": 0.64, "96": 0.61, "48": 0.55, "24": 0.44},
        "aaa_custom": {"96": 0.50},
    }
    setting = {
        "smec": {d: _metrics(v) for d, v in compressed["smec"].items()},
        "full": {"384": _metrics(0.645)},
        "bm25": {"sparse": _metrics(0.665)},
        "truncation": {d: _metrics(v) for d, v in compressed["truncation"].items()},
        "pca": {d: _metrics(v) for d, v in compressed["pca"].items()},
        "aaa_custom": {d: _metrics(v) for d, v in compressed["aaa_custom"].items()},
    }
    corpus_only = copy.deepcopy(setting)
    corpus_only["smec"]["96"] = _metrics(0.57)  # pca (0.58) wins this column here
    return {
        "meta": {"dataset": "scifact", "model": "minilm", "full_dim": 384, "dims": [192, 96, 48, 24],
                 "eval_split": "test", "n_queries": 300, "seed": 7},
        "settings": {"unsupervised-queries": setting, "corpus-only": corpus_only},
        "timings": {"encode": 12.34, "train": np.float64(56.7)},
    }


@pytest.fixture()
def written(tmp_path: Path) -> tuple[dict, dict[str, Path]]:
    results = _results()
    return results, write_report(tmp_path / "out", results)


def test_files_exist_and_no_tmp_left(written) -> None:
    _, paths = written
    assert set(paths) == {"results", "report", "plot"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert not list(paths["results"].parent.glob("*.tmp"))


def test_results_round_trip(written) -> None:
    results, paths = written
    loaded = load_results(paths["results"])
    assert loaded["meta"] == results["meta"]
    assert loaded["timings"]["train"] == pytest.approx(56.7)
    assert loaded["settings"]["unsupervised-queries"]["pca"]["96"]["nDCG@10"] == pytest.approx(0.58)
    # Dims stay in the order given (a string sort would put "192" before "24" before "96").
    assert list(loaded["settings"]["unsupervised-queries"]["smec"]) == ["192", "96", "48", "24"]
    assert paths["results"].read_text().startswith('{\n  "meta"')  # indent 2
    # Writing what was loaded gives the same file.
    again = write_report(paths["results"].parent.parent / "again", loaded)
    assert again["results"].read_text() == paths["results"].read_text()


def test_report_markdown(written) -> None:
    _, paths = written
    md = paths["report"].read_text()
    assert md.startswith("# ") and "scifact" in md.splitlines()[0] and "minilm" in md.splitlines()[0]
    assert "## Setting: unsupervised-queries" in md and "## Setting: corpus-only" in md
    assert "| Method | 384 (full) | 192 | 96 | 48 | 24 |" in md
    # Best compressed value per dim is bold; the full column is never bold.
    assert "| smec | — | **0.640** | **0.610** | **0.550** | **0.440** |" in md
    assert "| pca | — | 0.630 | 0.580 | 0.470 | — |" in md
    assert "| full | 0.645 | — | — | — | — |" in md
    assert "| bm25 (sparse) | 0.665 | — | — | — | — |" in md
    # In corpus-only pca wins the 96 column.
    corpus_only = md.split("## Setting: corpus-only")[1]
    assert "| pca | — | 0.630 | **0.580** | 0.470 | — |" in corpus_only
    # Fixed method order, then others alphabetically.
    table = md.split("## Setting: unsupervised-queries")[1].split("###")[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][2:]
    assert rows == ["full", "bm25 (sparse)", "truncation", "pca", "smec", "aaa_custom"]
    # Long table with all headline metrics.
    assert "| Method | Dim | " + " | ".join(HEADLINE) + " |" in md
    assert "| pca | 96 | 0.580 | 0.630 | 0.780 | 0.530 |" in md
    assert "| bm25 | sparse | 0.665 |" in md
    # Combined table and timings.
    assert "## nDCG@10 by setting" in md
    assert combined_table_markdown(_results()) in md
    assert md.rstrip().endswith("| **total** | **69.0** |")
    assert "| encode | 12.3 |" in md


def test_combined_table() -> None:
    table = combined_table_markdown(_results())
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "Method"
    assert header[1:6] == ["unsupervised-queries 384 (full)", "unsupervised-queries 192",
                           "unsupervised-queries 96", "unsupervised-queries 48", "unsupervised-queries 24"]
    assert header[6] == "corpus-only 384 (full)" and len(header) == 11
    smec_row = next(line for line in lines if line.startswith("| smec "))
    assert smec_row.count("**") == 2 * 7  # 4 columns bold in one setting, 3 in the other


def test_print_table() -> None:
    text = print_table(_results())
    assert "[unsupervised-queries] nDCG@10" in text and "[corpus-only] nDCG@10" in text
    assert text.count("\n\n") == 1
    smec_line = next(line for line in text.splitlines() if line.startswith("smec"))
    assert smec_line.split() == ["smec", "—", "0.640", "0.610", "0.550", "0.440"]
    assert "**" not in text


def test_plot_png(written) -> None:
    _, paths = written
    data = paths["plot"].read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # a real figure with two panels, not an empty canvas
    import matplotlib.image

    img = matplotlib.image.imread(paths["plot"])
    assert img.shape[0] > 300 and img.shape[1] > 800  # two subplots side by side


def test_order_methods() -> None:
    assert order_methods(["zeta", "smec", "alpha", "full", "pca", "bm25"]) == [
        "full", "bm25", "pca", "smec", "alpha", "zeta"]


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda r: r.pop("settings"), "'settings'"),
        (lambda r: r["meta"].pop("full_dim"), "'meta.full_dim'"),
        (lambda r: r["meta"].__setitem__("dims", [96, "x"]), "'meta.dims'"),
        (lambda r: r["settings"]["corpus-only"]["pca"]["96"].__setitem__("nDCG@10", "high"),
         "'settings.corpus-only.pca.96.nDCG@10'"),
        (lambda r: r["settings"]["corpus-only"].__setitem__("pca", [1, 2]), "'settings.corpus-only.pca'"),
        (lambda r: r["settings"]["corpus-only"]["pca"].__setitem__("big", {}), "'settings.corpus-only.pca.big'"),
        (lambda r: r["timings"].__setitem__("train", None), "'timings.train'"),
        (lambda r: r.__setitem__("validation", [1]), "'validation'"),
        (lambda r: r.__setitem__("validation", {"corpus-only": {"pca": {"96": {"nDCG@10": None}}}}),
         "'validation.corpus-only.pca.96.nDCG@10'"),
    ],
)
def test_load_results_bad_structure(tmp_path: Path, mutate, key: str) -> None:
    results = json.loads(json.dumps(_results(), default=float))
    mutate(results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(SmecError) as err:
        load_results(path)
    assert key in str(err.value) and str(path) in str(err.value)


def test_load_results_bad_json_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"meta": {}\n "settings": }')
    with pytest.raises(SmecError, match=r"results\.json:2:"):
        load_results(path)
    with pytest.raises(SmecError, match="nope.json"):
        load_results(tmp_path / "nope.json")


def test_write_report_rejects_nan(tmp_path: Path) -> None:
    results = _results()
    results["settings"]["corpus-only"]["smec"]["48"]["MAP@100"] = float("nan")
    with pytest.raises(SmecError, match="settings.corpus-only.smec.48.MAP@100"):
        write_report(tmp_path, results)
    assert not (tmp_path / "results.json").exists()


def test_validation_scores_get_their_own_table(tmp_path: Path) -> None:
    results = _results()
    results["meta"].update(validation="holdout:0.2", validation_split="train", n_validation_queries=162)
    results["validation"] = json.loads(json.dumps(results["settings"], default=float))
    results["validation"]["corpus-only"]["smec"]["48"]["nDCG@10"] = 0.987654
    write_report(tmp_path, results)
    report = (tmp_path / "report.md").read_text()
    head, held = report.split("## Validation: 162 held-out judged queries of split 'train'")
    assert "0.988" in held and "0.988" not in head  # the validation scores, in their own table only
    assert json.loads((tmp_path / "results.json").read_text())["validation"]["corpus-only"]["smec"]["48"]["nDCG@10"] \
        == 0.987654
    assert "[corpus-only] (validation) nDCG@10" in print_table(results)


def test_empty_settings(tmp_path: Path) -> None:
    results = {"meta": {"dataset": "d", "model": "m", "full_dim": 8, "dims": [4]}, "settings": {}}
    paths = write_report(tmp_path, results)
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    assert load_results(paths["results"])["timings"] == {}
    assert "(no results)" in print_table(results)


def test_headline_matches_metrics_module() -> None:
    from smec_dist.evaluation.metrics import HEADLINE as METRICS_HEADLINE

    assert HEADLINE == METRICS_HEADLINE


def test_efficiency_and_metric_suite_tables(tmp_path: Path) -> None:
    from smec_dist.report import efficiency_table_markdown, report_markdown, suite_tables_markdown

    results = _results()
    suite = {f"{f}@{k}": 0.5 for k in (1, 3, 5, 10, 100) for f in ("nDCG", "MRR", "Recall", "MAP", "P")}
    for method, by_dim in results["settings"]["unsupervised-queries"].items():
        for dim, metrics in by_dim.items():
            metrics.update(suite)
            if dim != "sparse":
                metrics.update({"bytes/doc": 4.0 * int(dim), "ms/query": 0.25})
    eff = efficiency_table_markdown(results, "unsupervised-queries", "nDCG@10")
    assert "| smec | 96 | 384 | 0.250 | 0.500 |" in eff
    assert "| bm25 |" not in eff  # it measured neither figure here
    assert efficiency_table_markdown(results, "corpus-only", "nDCG@10") is None
    tables = dict(suite_tables_markdown(results, "unsupervised-queries"))
    assert list(tables) == [1, 3, 5, 10, 100]
    assert "| Method | Dim | nDCG@1 | MRR@1 | Recall@1 | MAP@1 | P@1 |" in tables[1]
    text = report_markdown(results)
    assert "### unsupervised-queries: index size and search time" in text
    assert "#### unsupervised-queries: metrics at k = 3" in text
    assert "ms/query" not in text.split("### unsupervised-queries: all metrics")[1].split("###")[0]


def test_sts_results_use_their_own_metric(tmp_path: Path) -> None:
    results = {"meta": {"dataset": "stsb", "model": "minilm", "full_dim": 384, "dims": [96, 48],
                        "metric": "Spearman", "metrics": ["Spearman"]},
               "settings": {"corpus-only": {"full": {"384": {"Spearman": 0.82}},
                                            "mrl": {"96": {"Spearman": 0.81}, "48": {"Spearman": 0.78}}}}}
    paths = write_report(tmp_path, results)
    text = paths["report"].read_text()
    assert "Cells are Spearman" in text and "## Spearman by setting" in text
    assert "| mrl | 96 | 0.810 |" in text and "nDCG@10" not in text
