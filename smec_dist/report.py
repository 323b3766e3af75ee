"""The run's artifacts: ``results.json``, ``report.md`` and ``plot.png``.

The structure of ``results.json`` is :mod:`smec_dist.results`'s. Every file is written
atomically (:mod:`smec_dist.io`) so an interrupted run never leaves a half-written artifact
that a later step would trust.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SmecError
from .evaluation.metrics import HEADLINE
from .io import atomic_path, atomic_write_text
from .plot import plot_results
from .results import (SPARSE_KEY, compressed_dims, load_results, method_label, order_methods, reference_value,
                      to_builtin, validate_results)

logger = logging.getLogger(__name__)

__all__ = ["HEADLINE", "load_results", "order_methods", "validate_results", "write_report", "report_markdown",
           "print_table", "combined_table_markdown", "efficiency_table_markdown", "suite_tables_markdown"]

#: Efficiency figures stored beside the metrics of each (method, dim).
EFFICIENCY: tuple[str, ...] = ("bytes/doc", "ms/query")

MISSING = "—"


# --------------------------------------------------------------------------- tables


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _grid(methods: Mapping[str, Any], full: str, dims: list[str], metric: str) -> dict[str, list[float | None]]:
    """Per method: [reference value, value at each compressed dim] (None where absent)."""
    grid: dict[str, list[float | None]] = {}
    for method in order_methods(methods):
        by_dim = methods[method]
        row: list[float | None] = [reference_value(by_dim, full, metric)]
        for d in dims:
            v = by_dim.get(d, {}).get(metric)
            row.append(None if v is None else float(v))
        grid[method] = row
    return grid


def _bold_best(grid: Mapping[str, list[float | None]]) -> dict[str, list[str]]:
    """Format a grid, bolding each compressed column's best value (ties all bold).

    Comparison is on the printed 3-decimal value, so two cells that read the same are
    either both bold or neither. The reference column (index 0) is never bolded: it is the
    ceiling being compressed towards, not a competitor.
    """
    cells = {m: [_fmt(v) for v in row] for m, row in grid.items()}
    n_cols = len(next(iter(grid.values()), []))
    for c in range(1, n_cols):
        shown = [round(row[c], 3) for row in grid.values() if row[c] is not None]
        if not shown:
            continue
        best = max(shown)
        for m, row in grid.items():
            if row[c] is not None and round(row[c], 3) == best:
                cells[m][c] = f"**{cells[m][c]}**"
    return cells


# --------------------------------------------------------------------------- tables


def setting_table_markdown(results: Mapping[str, Any], setting: str, metric: str = "nDCG@10") -> str:
    """One setting's method × dim table of ``metric``, best compressed value per dim bold.

    Args:
        results: A validated results structure.
        setting: The setting's name.
        metric: Metric shown in the cells.

    Returns:
        A markdown table.
    """
    full = str(results["meta"]["full_dim"])
    dims = compressed_dims(results)
    methods = results["settings"][setting]
    cells = _bold_best(_grid(methods, full, dims, metric))
    for m, row in cells.items():  # several training seeds: mean ± standard deviation
        for c, d in enumerate(dims, start=1):
            std = methods[m].get(d, {}).get(f"{metric} std")
            if std is not None:
                row[c] = f"{row[c]} ± {float(std):.3f}"
    header = ["Method", f"{full} (full)"] + dims
    return _md_table(header, [[method_label(m)] + row for m, row in cells.items()])


def _long_metrics(results: Mapping[str, Any]) -> tuple[str, ...]:
    """The metrics of the long tables: ``meta.metrics`` when given (STS: Spearman), else
    :data:`HEADLINE` plus any other cut-offs the run computed (P@10, nDCG@1, ...)."""
    if results["meta"].get("metrics"):
        return tuple(results["meta"]["metrics"])
    seen: list[str] = []
    for methods in results["settings"].values():
        for by_dim in methods.values():
            for metrics in by_dim.values():
                seen += [m for m in metrics if m not in seen and m not in EFFICIENCY and not m.endswith(" std")]
    extra = [m for m in seen if m not in HEADLINE]
    return HEADLINE + tuple(extra) if len(extra) <= 12 else HEADLINE


def _cutoffs(results: Mapping[str, Any]) -> list[int]:
    """The cut-offs k of the ``<metric>@k`` values a run computed, ascending."""
    ks: set[int] = set()
    for methods in results["settings"].values():
        for by_dim in methods.values():
            for metrics in by_dim.values():
                ks.update(int(m.rsplit("@", 1)[1]) for m in metrics
                          if "@" in m and m.rsplit("@", 1)[1].isdigit() and not m.endswith(" std"))
    return sorted(ks)


def suite_tables_markdown(results: Mapping[str, Any], setting: str) -> list[tuple[int, str]]:
    """The whole metric suite of a setting, one table per cut-off k (nDCG, MRR, Recall, MAP, P
    at k), for runs with more cut-offs than the long table can hold (``smec compare``)."""
    families = ("nDCG", "MRR", "Recall", "MAP", "P")
    rows_all = _method_dim_rows(results, setting)
    out = []
    for k in _cutoffs(results):
        names = [f"{f}@{k}" for f in families]
        rows = [[m, key] + [_fmt(metrics.get(n)) for n in names] for m, key, metrics in rows_all
                if any(n in metrics for n in names)]
        if rows:
            out.append((k, _md_table(["Method", "Dim", *names], rows, align=["l", "l"] + ["r"] * len(names))))
    return out


def setting_long_table_markdown(results: Mapping[str, Any], setting: str) -> str:
    """One setting's metrics (:func:`_long_metrics`), one row per (method, dim).

    Args:
        results: A validated results structure.
        setting: The setting's name.

    Returns:
        A markdown table with columns Method, Dim and the four headline metrics.
    """
    names = _long_metrics(results)
    rows = [[method, key] + [_fmt(metrics.get(name)) for name in names]
            for method, key, metrics in _method_dim_rows(results, setting)]
    return _md_table(["Method", "Dim", *names], rows, align=["l", "l"] + ["r"] * len(names))


def _method_dim_rows(results: Mapping[str, Any], setting: str) -> list[tuple[str, str, Mapping[str, float]]]:
    """(method, dim key, metrics) in report order: full/sparse first, then dims largest first."""
    full = str(results["meta"]["full_dim"])
    key_order = [full, SPARSE_KEY] + compressed_dims(results)
    methods = results["settings"][setting]
    rows = []
    for method in order_methods(methods):
        by_dim = methods[method]
        keys = [k for k in key_order if k in by_dim] + [k for k in by_dim if k not in key_order]
        rows += [(method, key, by_dim[key]) for key in keys]
    return rows


def efficiency_table_markdown(results: Mapping[str, Any], setting: str, metric: str) -> str | None:
    """Bytes per document of a float32 index and exact-search ms per query, beside ``metric``,
    for every (method, dim) of a setting; None when the run measured neither."""
    rows = []
    for method, key, metrics in _method_dim_rows(results, setting):
        if not any(name in metrics for name in EFFICIENCY):
            continue
        size = metrics.get("bytes/doc")
        ms = metrics.get("ms/query")
        rows.append([method, key, MISSING if size is None else f"{size:.0f}",
                     MISSING if ms is None else f"{ms:.3f}", _fmt(metrics.get(metric))])
    if not rows:
        return None
    return _md_table(["Method", "Dim", "bytes/doc", "search ms/query", metric], rows,
                     align=["l", "l", "r", "r", "r"])


def combined_table_markdown(results: Mapping[str, Any], metric: str = "nDCG@10") -> str:
    """``metric`` for every method across all settings side by side (for the README).

    Rows are methods; columns are, per setting, the full/sparse value then each compressed
    dim, headed ``<setting> <dim>``. The best compressed value of each column is bold.

    Args:
        results: A validated results structure.
        metric: Metric shown in the cells.

    Returns:
        A markdown table (just the table, no heading).
    """
    full = str(results["meta"]["full_dim"])
    dims = compressed_dims(results)
    settings = results["settings"]
    all_methods = order_methods(m for methods in settings.values() for m in methods)
    header = ["Method"]
    cells: dict[str, list[str]] = {m: [] for m in all_methods}
    for setting, methods in settings.items():
        header += [f"{setting} {full} (full)"] + [f"{setting} {d}" for d in dims]
        formatted = _bold_best(_grid(methods, full, dims, metric))
        for m in all_methods:
            cells[m] += formatted.get(m, [MISSING] * (1 + len(dims)))
    return _md_table(header, [[method_label(m)] + row for m, row in cells.items()])


def timings_table_markdown(results: Mapping[str, Any]) -> str:
    """Timings as a markdown table, with a total row."""
    timings = results.get("timings", {})
    rows = [[step, f"{float(s):.1f}"] for step, s in timings.items()]
    rows.append(["**total**", f"**{sum(float(s) for s in timings.values()):.1f}**"])
    return _md_table(["Step", "Seconds"], rows)


def report_markdown(results: Mapping[str, Any], headline_metric: str | None = None) -> str:
    """The full ``report.md`` text.

    Args:
        results: A validated results structure.
        headline_metric: Metric of the per-setting grid tables.

    Returns:
        Markdown text ending with a newline.
    """
    meta = results["meta"]
    headline_metric = headline_metric or meta.get("metric", "nDCG@10")
    full = meta["full_dim"]
    out = [f"# SMEC compression results: {meta['dataset']} / {meta['model']}", ""]
    for key, value in meta.items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else value
        out.append(f"- **{key}**: {shown}")
    out += [
        "",
        f"Cells are {headline_metric}. The `{full} (full)` column is the uncompressed backbone "
        f"(and, for BM25, the sparse baseline); the best compressed value of each dim is **bold**; "
        f"{MISSING} means not run.",
        "",
    ]
    for setting in results["settings"]:
        out += [f"## Setting: {setting}", "", setting_table_markdown(results, setting, headline_metric), ""]
        out += [f"### {setting}: all metrics", "", setting_long_table_markdown(results, setting), ""]
        if not results["meta"].get("metrics") and len(_cutoffs(results)) > 2:  # the metric suite of smec compare
            for k, table in suite_tables_markdown(results, setting):
                out += [f"#### {setting}: metrics at k = {k}", "", table, ""]
        eff = efficiency_table_markdown(results, setting, headline_metric)
        if eff:
            out += [f"### {setting}: index size and search time", "",
                    "bytes/doc: a float32 index (dim x 4); search ms/query: exact FAISS inner-product "
                    "search of the eval queries, one process (BM25: scoring with bm25s, index build included).",
                    "", eff, ""]
    if results["settings"]:
        out += [f"## {headline_metric} by setting", "", combined_table_markdown(results, headline_metric), ""]
    if results.get("validation"):
        held = validation_view(results)
        out += [f"## Validation: {meta.get('n_validation_queries', '?')} held-out judged queries of split "
                f"'{meta.get('validation_split', '?')}'", "",
                "These queries trained nothing (neither as anchors nor as judged pairs): choose settings on "
                "these scores, then read the test tables above once.", "",
                combined_table_markdown(held, headline_metric), ""]
    if results.get("timings"):
        out += ["## Timings", "", timings_table_markdown(results), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def validation_view(results: Mapping[str, Any]) -> dict[str, Any]:
    """The results with the validation scores in the place of the test ones (for the tables)."""
    return {"meta": results["meta"], "settings": results.get("validation", {}), "timings": {}}


def print_table(results: Mapping[str, Any], metric: str = "nDCG@10") -> str:
    """A compact plain-text table for the terminal, one block per setting.

    Args:
        results: A validated results structure.
        metric: Metric shown.

    Returns:
        The text (no trailing newline); the caller decides where it goes.
    """
    full = str(results["meta"]["full_dim"])
    dims = compressed_dims(results)
    header = ["method", f"{full}/full"] + dims
    blocks = []
    parts = [("", results["settings"])] + ([(" (validation)", results["validation"])] if results.get("validation") else [])
    for label, settings in parts:
        for setting, methods in settings.items():
            rows = [[m] + [_fmt(v) for v in row] for m, row in _grid(methods, full, dims, metric).items()]
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

            def line(r: list[str]) -> str:
                return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

            blocks.append("\n".join([f"[{setting}]{label} {metric}", line(header), *(line(r) for r in rows)]))
    if not blocks:
        return f"(no results) {results['meta']['dataset']} / {results['meta']['model']}"
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- writing


def write_report(
    out_dir: str | os.PathLike[str],
    results: Mapping[str, Any],
    headline_metric: str | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``plot.png`` into ``out_dir``.

    Args:
        out_dir: Target folder (created if missing).
        results: The results structure (numpy numbers are accepted and converted).
        headline_metric: Metric of the per-setting tables and of the plot.

    Returns:
        ``{"results": path, "report": path, "plot": path}``.

    Raises:
        SmecError: If the structure is invalid (naming the key) or a file cannot be written.
    """
    data = validate_results(to_builtin(results))
    headline_metric = headline_metric or data["meta"].get("metric", "nDCG@10")
    out = Path(out_dir)
    paths = {"results": out / "results.json", "report": out / "report.md", "plot": out / "plot.png"}
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Insertion order is kept (no sort_keys): it is the order the caller chose, and
        # a string sort would put dim "192" before "24".
        atomic_write_text(paths["results"], json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        atomic_write_text(paths["report"], report_markdown(data, headline_metric))
        with atomic_path(paths["plot"]) as tmp, open(tmp, "wb") as fh:
            plot_results(data, fh, headline_metric)
    except OSError as exc:
        raise SmecError(f"{exc.filename or out}: cannot write report ({exc.strerror or exc})") from None
    logger.info("report written to %s", out)
    return paths
