"""``plot.png``: a metric against the embedding dimension, one panel per setting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .results import REFERENCE_METHODS, SPARSE_KEY, compressed_dims, method_label, order_methods, reference_value


def plot_results(results: Mapping[str, Any], path, metric: str) -> None:
    """Draw ``metric`` against dim, one subplot per setting, saved as PNG to ``path`` (a path or
    a binary file object).

    The object-oriented Figure + Agg canvas is used instead of pyplot so that nothing
    global (the backend, the current figure) changes in the calling process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    meta = results["meta"]
    full = str(meta["full_dim"])
    dims = compressed_dims(results)
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
                y = reference_value(by_dim, full, metric)
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
            (h,) = ax.plot(xs, ys, marker=marker[method], color=colour[method], label=method_label(method), linewidth=1.5)
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
