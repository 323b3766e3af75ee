"""The run's artifacts: ``results.json``, ``report.md`` and ``plot.png``.

``results.json`` holds::

    {"meta": {"dataset": str, "model": str, "full_dim": int, "dims": [int, ...], ...},
     "settings": {setting: {method: {dim key: {metric: number}}}},
     "validation": {setting: {method: {dim key: {metric: number}}}},   # only with run.validation
     "timings": {step: seconds}}

A dim key is a dimension as a string (``"384"``, ``"96"``) or ``"sparse"`` (BM25). Every file
is written atomically (``name.tmp`` then :func:`os.replace`) so an interrupted run never
leaves a half-written artifact that a later step would trust.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smec_dist.errors import SmecError

logger = logging.getLogger(__name__)

HEADLINE: tuple[str, ...] = ("nDCG@10", "MRR@10", "Recall@100", "MAP@100")
"""Same as :data:`smec_dist.evaluation.metrics.HEADLINE`; repeated to keep this module light."""

#: Methods in report order; anything else follows alphabetically.
METHOD_ORDER: tuple[str, ...] = ("full", "bm25", "truncation", "pca", "single", "mrl", "cmrl", "linear", "smec")

#: Efficiency figures stored beside the metrics of each (method, dim).
EFFICIENCY: tuple[str, ...] = ("bytes/doc", "ms/query")

#: Methods drawn as horizontal reference lines, not curves, in the plot.
REFERENCE_METHODS: tuple[str, ...] = ("full", "bm25")

SPARSE_KEY = "sparse"
MISSING = "—"

_REQUIRED_META: dict[str, str] = {
    "dataset": "a string",
    "model": "a string",
    "full_dim": "a positive integer",
    "dims": "a list of positive integers",
}


# --------------------------------------------------------------------------- validation


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_pos_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def validate_results(results: Any, source: str = "results") -> dict[str, Any]:
    """Check the results structure, raising on the first problem.

    Args:
        results: The parsed structure.
        source: Prefix for error messages (a file name, or ``"results"``).

    Returns:
        The same object (for chaining), with ``timings`` defaulted to ``{}``.

    Raises:
        SmecError: Naming the dotted key at fault, e.g. ``settings.supervised.pca.96``.
    """
    if not isinstance(results, dict):
        raise SmecError(f"{source}: top level must be an object with keys meta, settings, timings")
    for key in ("meta", "settings"):
        if key not in results:
            raise SmecError(f"{source}: missing key '{key}'")
    meta = results["meta"]
    if not isinstance(meta, dict):
        raise SmecError(f"{source}: key 'meta' must be an object")
    for key, what in _REQUIRED_META.items():
        if key not in meta:
            raise SmecError(f"{source}: missing key 'meta.{key}'")
        value = meta[key]
        ok = {
            "dataset": isinstance(value, str),
            "model": isinstance(value, str),
            "full_dim": _is_pos_int(value),
            "dims": isinstance(value, list) and all(_is_pos_int(d) for d in value),
        }[key]
        if not ok:
            raise SmecError(f"{source}: key 'meta.{key}' must be {what}, got {value!r}")

    _check_tables(results["settings"], "settings", source)
    if "validation" in results:
        _check_tables(results["validation"], "validation", source)

    timings = results.setdefault("timings", {})
    if not isinstance(timings, dict):
        raise SmecError(f"{source}: key 'timings' must be an object of step: seconds")
    for step, seconds in timings.items():
        if not _is_number(seconds) or not math.isfinite(seconds):
            raise SmecError(f"{source}: key 'timings.{step}' must be a finite number, got {seconds!r}")
    return results


def _check_tables(settings: Any, key: str, source: str) -> None:
    """``{setting: {method: {dim key: {metric: number}}}}`` under ``key``, or a SmecError naming the dotted key."""
    if not isinstance(settings, dict):
        raise SmecError(f"{source}: key '{key}' must be an object")
    for setting, methods in settings.items():
        where = f"{key}.{setting}"
        if not isinstance(methods, dict):
            raise SmecError(f"{source}: key '{where}' must be an object of methods")
        for method, by_dim in methods.items():
            where_m = f"{where}.{method}"
            if not isinstance(by_dim, dict):
                raise SmecError(f"{source}: key '{where_m}' must be an object of dims")
            for dim, metrics in by_dim.items():
                where_d = f"{where_m}.{dim}"
                if dim != SPARSE_KEY and not (dim.isdigit() and int(dim) > 0):
                    raise SmecError(f"{source}: key '{where_d}': dim must be a positive integer or 'sparse'")
                if not isinstance(metrics, dict):
                    raise SmecError(f"{source}: key '{where_d}' must be an object of metrics")
                for name, value in metrics.items():
                    if not _is_number(value) or not math.isfinite(value):
                        raise SmecError(f"{source}: key '{where_d}.{name}' must be a finite number, got {value!r}")


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``results.json``.

    Args:
        path: The file.

    Returns:
        The results structure.

    Raises:
        SmecError: If the file is missing, not JSON (naming line and column), or has a bad
            structure (naming the key).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SmecError(f"{p}: cannot read results file ({exc.strerror or exc})") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SmecError(f"{p}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    return validate_results(results, source=str(p))


# --------------------------------------------------------------------------- helpers


def _to_builtin(value: Any) -> Any:
    """Turn numpy scalars/arrays and paths into JSON-native values, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    # numpy is optional here: duck-type its scalars and arrays.
    if hasattr(value, "tolist") and callable(value.tolist):
        return _to_builtin(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def order_methods(methods: Iterable[str]) -> list[str]:
    """Methods in report order: :data:`METHOD_ORDER` first, the rest alphabetically."""
    methods = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


def _compressed_dims(results: Mapping[str, Any]) -> list[str]:
    """Compressed dim keys: meta's dims in their order, then extra ones found, largest first."""
    meta = results["meta"]
    full = str(meta["full_dim"])
    dims = [str(d) for d in meta["dims"] if str(d) != full]
    extra: set[str] = set()
    for methods in results["settings"].values():
        for by_dim in methods.values():
            extra.update(d for d in by_dim if d not in dims and d not in (full, SPARSE_KEY))
    return dims + sorted(extra, key=int, reverse=True)


def _reference_value(by_dim: Mapping[str, Mapping[str, float]], full: str, metric: str) -> float | None:
    """The uncompressed column's value: the full dim, or BM25's sparse score."""
    for key in (full, SPARSE_KEY):
        if key in by_dim and metric in by_dim[key]:
            return float(by_dim[key][metric])
    return None


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
        row: list[float | None] = [_reference_value(by_dim, full, metric)]
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


def _method_label(method: str) -> str:
    return "bm25 (sparse)" if method == "bm25" else method


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
    dims = _compressed_dims(results)
    methods = results["settings"][setting]
    cells = _bold_best(_grid(methods, full, dims, metric))
    for m, row in cells.items():  # several training seeds: mean ± standard deviation
        for c, d in enumerate(dims, start=1):
            std = methods[m].get(d, {}).get(f"{metric} std")
            if std is not None:
                row[c] = f"{row[c]} ± {float(std):.3f}"
    header = ["Method", f"{full} (full)"] + dims
    return _md_table(header, [[_method_label(m)] + row for m, row in cells.items()])


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
    key_order = [full, SPARSE_KEY] + _compressed_dims(results)
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
    dims = _compressed_dims(results)
    settings = results["settings"]
    all_methods = order_methods(m for methods in settings.values() for m in methods)
    header = ["Method"]
    cells: dict[str, list[str]] = {m: [] for m in all_methods}
    for setting, methods in settings.items():
        header += [f"{setting} {full} (full)"] + [f"{setting} {d}" for d in dims]
        formatted = _bold_best(_grid(methods, full, dims, metric))
        for m in all_methods:
            cells[m] += formatted.get(m, [MISSING] * (1 + len(dims)))
    return _md_table(header, [[_method_label(m)] + row for m, row in cells.items()])


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
    dims = _compressed_dims(results)
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


# --------------------------------------------------------------------------- plot


def _plot(results: Mapping[str, Any], path: Path, metric: str) -> None:
    """Draw ``metric`` against dim, one subplot per setting, saved as PNG to ``path``.

    The object-oriented Figure + Agg canvas is used instead of pyplot so that nothing
    global (the backend, the current figure) changes in the calling process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    meta = results["meta"]
    full = str(meta["full_dim"])
    dims = _compressed_dims(results)
    settings = list(results["settings"].items()) or [("(no settings)", {})]
    all_methods = order_methods(m for _, methods in settings for m in methods)
    curve_methods = [m for m in all_methods if m not in REFERENCE_METHODS]
    palette = [f"C{i}" for i in range(10)]
    colour = {m: palette[i % len(palette)] for i, m in enumerate(curve_methods)}
    markers = "osD^v<>ph*"
    marker = {m: markers[i % len(markers)] for i, m in enumerate(curve_methods)}

    n = len(settings)
    fig = Figure(figsize=(4.6 * n + 0.6, 4.4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    handles: dict[str, Any] = {}
    for ax, (setting, methods) in zip(axes, settings):
        xs_all: set[int] = set()
        for method in all_methods:
            by_dim = methods.get(method)
            if not by_dim:
                continue
            if method in REFERENCE_METHODS:
                y = _reference_value(by_dim, full, metric)
                if y is None:
                    continue
                style = {"full": ("black", f"full backbone ({full})"), "bm25": ("grey", "BM25")}[method]
                ax.axhline(y, color=style[0], linestyle="--", linewidth=1.2)
                handles.setdefault(method, Line2D([], [], color=style[0], linestyle="--", label=style[1]))
                continue
            pts = sorted(
                (int(d), float(v[metric]))
                for d, v in by_dim.items()
                if d != SPARSE_KEY and metric in v
            )
            if not pts:
                continue
            xs, ys = zip(*pts)
            xs_all.update(xs)
            (h,) = ax.plot(xs, ys, marker=marker[method], color=colour[method], label=method, linewidth=1.5)
            handles.setdefault(method, h)
        ticks = sorted(xs_all | {int(d) for d in dims})
        if ticks:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(t) for t in ticks])
            ax.set_xlim(min(ticks) / 1.25, max(ticks) * 1.25)
        else:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(setting)
        ax.set_xlabel("dimension (log2 scale)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(metric)
    if handles:
        ordered = [handles[m] for m in all_methods if m in handles]
        fig.legend(handles=ordered, loc="outside right center", fontsize="small")
    fig.suptitle(f"{metric} vs. embedding dimension: {meta['dataset']} / {meta['model']}")
    fig.savefig(path, format="png", dpi=120)


# --------------------------------------------------------------------------- writing


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    data = validate_results(_to_builtin(results))
    headline_metric = headline_metric or data["meta"].get("metric", "nDCG@10")
    out = Path(out_dir)
    paths = {"results": out / "results.json", "report": out / "report.md", "plot": out / "plot.png"}
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Insertion order is kept (no sort_keys): it is the order the caller chose, and
        # a string sort would put dim "192" before "24".
        _atomic_write_text(paths["results"], json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        _atomic_write_text(paths["report"], report_markdown(data, headline_metric))
        tmp = paths["plot"].with_name(paths["plot"].name + ".tmp")
        _plot(data, tmp, headline_metric)
        os.replace(tmp, paths["plot"])
    except OSError as exc:
        raise SmecError(f"{exc.filename or out}: cannot write report ({exc.strerror or exc})") from None
    logger.info("report written to %s", out)
    return paths
