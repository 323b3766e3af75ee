"""``smec suite``: the adapter job over several datasets, and one report across them.

Each dataset runs as its own ``smec run`` into ``<run.output_dir>/<dataset>/`` with what that
dataset allows:

* a BEIR set with a train split: unlabelled anchors ``split:train``; settings
  unsupervised-queries, corpus-only and (with its judgments) supervised; validation a held-out
  part of the train judgments;
* a BEIR set with a test split only: anchors ``holdout:<suite.anchor_holdout>`` of the test
  queries (scored on the other part); settings unsupervised-queries and corpus-only;
  validation a held-out part of the anchors (judged, never scored as the test);
* an STS folder: the STS job (corpus-only and supervised; Spearman), reported apart.

A finished dataset (its ``results.json`` beside a ``config.yaml`` equal to the one it would
run with) is not redone, so an interrupted suite resumes. ``suite.json``, ``suite.md`` and
``suite.png`` then hold, per setting, method and dim, each dataset's score with its retention
(% of the full width) and the mean over the retrieval sets.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import yaml

from ..config import RESOLVED, Config, load_config
from ..data import ensure_dataset
from ..errors import SmecError
from ..io import atomic_path, atomic_write_json, atomic_write_text
from ..results import order_methods
from .adapter import is_sts_folder, run_job
from .base import Recipe, execute

log = logging.getLogger(__name__)


def dataset_overrides(cfg: Config, name: str, root: Path) -> list[str]:
    """The ``smec run`` overrides that make ``cfg`` the suite's run of one dataset."""
    out = Path(cfg.run.output_dir) / Path(name).name
    # every run of every suite shares one content-addressed cache root beside the suite's folder
    cache_root = cfg.cache.root or str(Path(cfg.run.output_dir).parent / "cache")
    common = [f"data.dataset={name}", f"run.output_dir={out}", "run.overwrite=true", "cache.dir=",
              f"cache.root={cache_root}"]
    wanted = list(cfg.run.settings)
    if is_sts_folder(root):
        settings = [s for s in wanted if s in ("corpus-only", "supervised")]
        return common + [f"run.settings=[{','.join(settings)}]", "run.validation=", "data.eval_split=test",
                         f"run.methods=[{','.join(m for m in cfg.run.methods if m != 'bm25')}]"]
    splits = {p.stem for p in (root / "qrels").glob("*.tsv")}
    val = [f"run.validation={cfg.suite.validation}"] if cfg.suite.validation else ["run.validation="]
    if cfg.run.supervised_split in splits and cfg.run.supervised_split != cfg.data.eval_split:
        return common + val + [f"run.anchors=split:{cfg.run.supervised_split}",
                               f"run.settings=[{','.join(wanted)}]"]
    settings = [s for s in wanted if s != "supervised"]  # no judgments to train on
    return common + val + [f"run.anchors=holdout:{cfg.suite.anchor_holdout}", f"run.settings=[{','.join(settings)}]"]


def _score(results: dict, setting: str, method: str, key: str, metric: str, part: str = "settings") -> float | None:
    by_dim = results.get(part, {}).get(setting, {}).get(method, {})
    value = by_dim.get(key, {}).get(metric)
    return None if value is None else float(value)


class Suite(Recipe):
    """See the module docstring."""

    def __init__(self, cfg: Config, config_path: str | None, overrides: list[str]):
        self.cfg, self.config_path, self.overrides = cfg, config_path, list(overrides)
        self.out = Path(cfg.run.output_dir)

    def setup(self) -> None:
        cfg = self.cfg
        if not cfg.suite.datasets:
            raise SmecError("suite.datasets: name at least one dataset (a folder under data.data_dir, or a path)")
        self.roots = {name: ensure_dataset(name, cfg.data.data_dir) for name in cfg.suite.datasets}
        fingerprint = {k: v for k, v in cfg.to_dict().items() if k not in ("track",)}
        marker = self.out / "suite.json"
        if marker.is_file() and not cfg.run.overwrite:
            try:
                before = json.loads(marker.read_text(encoding="utf-8")).get("config")
            except (OSError, ValueError):
                before = None
            if before is not None and before != fingerprint:
                raise SmecError(f"run.output_dir: {self.out} holds a suite run with another config; pass --overwrite "
                                f"(run.overwrite=true) or name another run.output_dir")
        self.fingerprint = fingerprint
        self.out.mkdir(parents=True, exist_ok=True)

    def _dataset_config(self, name: str) -> tuple[Config, list[str]]:
        extra = dataset_overrides(self.cfg, name, self.roots[name])
        return load_config(self.config_path, self.overrides + extra), extra

    def _done(self, cfg: Config) -> dict | None:
        """The results of a dataset finished with exactly this config, else None."""
        folder = Path(cfg.run.output_dir)
        try:
            saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
            results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            return None
        saved.pop(RESOLVED, None)
        mine = cfg.to_dict()
        for d in (saved, mine):  # how a run is kept and watched does not change its results
            d.get("run", {}).pop("overwrite", None)
            d.get("run", {}).pop("progress", None)
            d.pop("track", None)
        return results if saved == mine else None

    def run(self) -> dict:
        per_dataset: dict[str, dict] = {}
        timings: dict[str, float] = {}
        for name in self.cfg.suite.datasets:
            cfg, _ = self._dataset_config(name)
            done = self._done(cfg)
            if done is not None:
                log.info("suite: %s finished before with this config: reusing %s", name, cfg.run.output_dir)
                per_dataset[name] = done
                continue
            log.info("suite: %s -> %s", name, cfg.run.output_dir)
            t = time.perf_counter()
            per_dataset[name] = run_job(cfg)
            timings[name] = round(time.perf_counter() - t, 1)
        return {"config": self.fingerprint, "datasets": {n: self._describe(n, r) for n, r in per_dataset.items()},
                "tables": suite_tables(per_dataset), "validation": suite_tables(per_dataset, "validation"),
                "timings": timings, "_results": per_dataset}

    @staticmethod
    def _describe(name: str, results: dict) -> dict:
        meta = results["meta"]
        return {"metric": meta.get("metric", "nDCG@10"), "n_queries": meta.get("n_queries", meta.get("n_pairs")),
                "n_docs": meta.get("n_docs", meta.get("n_train_sentences")), "full_dim": meta["full_dim"],
                "anchors": meta.get("anchors"), "n_anchor_queries": meta.get("n_anchor_queries"),
                "n_validation_queries": meta.get("n_validation_queries", 0),
                "ignore_identical_ids": meta.get("ignore_identical_ids")}

    def save(self, result: dict) -> dict:
        result.pop("_results")
        atomic_write_json(self.out / "suite.json", result, indent=1)
        atomic_write_text(self.out / "suite.md", suite_markdown(result))
        with atomic_path(self.out / "suite.png") as tmp, open(tmp, "wb") as fh:
            suite_plot(result, fh)
        print(suite_markdown(result, brief=True))
        print(f"wrote {self.out / 'suite.json'}, {self.out / 'suite.md'}, {self.out / 'suite.png'}")
        return result


def suite_tables(per_dataset: dict[str, dict], part: str = "settings") -> dict:
    """``{setting: {method: {dim: {"datasets": {name: score}, "retention": {name: %}, "mean",
    "mean_retention", "n"}}}}``; the mean is over the retrieval sets that have the cell
    (an STS set is scored in Spearman and kept out of it)."""
    tables: dict = {}
    for name, results in per_dataset.items():
        meta = results["meta"]
        metric = meta.get("metric", "nDCG@10")
        full = str(meta["full_dim"])
        for setting, methods in results.get(part, {}).items():
            reference = _score(results, setting, "full", full, metric, part)
            for method, by_dim in methods.items():
                for key in by_dim:
                    score = _score(results, setting, method, key, metric, part)
                    cell = tables.setdefault(setting, {}).setdefault(method, {}).setdefault(
                        key, {"datasets": {}, "retention": {}, "metric": {}})
                    cell["datasets"][name] = score
                    cell["metric"][name] = metric
                    if reference and score is not None:
                        cell["retention"][name] = 100.0 * score / reference
    for methods in tables.values():
        for by_dim in methods.values():
            for cell in by_dim.values():
                retrieval = [n for n, m in cell["metric"].items()
                             if m != "Spearman" and cell["datasets"][n] is not None]
                cell["n"] = len(retrieval)
                cell["mean"] = sum(cell["datasets"][n] for n in retrieval) / len(retrieval) if retrieval else None
                kept = [cell["retention"][n] for n in retrieval if n in cell["retention"]]
                cell["mean_retention"] = sum(kept) / len(kept) if kept else None
    return tables


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.1f}%" if pct else f"{x:.3f}"


def suite_markdown(result: dict, brief: bool = False) -> str:
    """The suite's report: per setting, a table per dim (methods x datasets, the mean and the
    mean retention), then SMEC against PCA and the best baseline. ``brief``: the means only."""
    datasets = result["datasets"]
    names = list(datasets)
    lines = ["# Suite: " + ", ".join(f"{n} ({d['n_queries']} {'pairs' if d['metric'] == 'Spearman' else 'queries'})"
                                     for n, d in datasets.items()), ""]
    for setting, methods in result["tables"].items():
        dims = sorted({int(k) for by_dim in methods.values() for k in by_dim if k.isdigit()}, reverse=True)
        lines += [f"## {setting}", ""]
        if dims:  # BM25's one score ("sparse") sits under the full width
            methods = {m: {str(dims[0]): by_dim["sparse"], **by_dim} if "sparse" in by_dim else by_dim
                       for m, by_dim in methods.items()}
        if brief:
            header = ["method"] + [str(d) for d in dims]
            lines += ["mean nDCG@10 over the retrieval sets (retention)", "",
                      "| " + " | ".join(header) + " |", "|---|" + "---:|" * len(dims)]
            for m in order_methods(methods):
                cells = [methods[m].get(str(d)) for d in dims]
                lines.append("| " + " | ".join([m] + ["" if c is None else
                                                      f"{_fmt(c['mean'])} ({_fmt(c['mean_retention'], pct=True)})"
                                                      for c in cells]) + " |")
            lines.append("")
            continue
        for dim in dims:
            key = str(dim)
            rows = [m for m in order_methods(methods) if key in methods[m]]
            header = ["method"] + names + ["mean", "mean retention"]
            lines += [f"**{dim} dims** (nDCG@10; an STS set: Spearman, not in the mean)", "",
                      "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
            for m in rows:
                cell = methods[m][key]
                lines.append("| " + " | ".join([m] + [_fmt(cell["datasets"].get(n)) for n in names]
                                               + [_fmt(cell["mean"]), _fmt(cell["mean_retention"], pct=True)]) + " |")
            lines.append("")
    lines += targets_markdown(result)
    if result.get("validation"):
        lines += ["# Validation (held-out judged queries: tune here, never on the tables above)", ""]
        lines += suite_markdown({**result, "tables": result["validation"], "validation": {}, "timings": {}},
                                brief=True).split("\n", 2)[2].splitlines()
    if result.get("timings") and not brief:
        lines += ["## Wall time (this machine)", ""] + [f"- {n}: {s:.0f} s" for n, s in result["timings"].items()]
    return "\n".join(lines) + "\n"


def targets(result: dict, setting: str = "unsupervised-queries", min_queries: int = 100) -> list[dict]:
    """The method's targets in ``setting``, per compressed dim: SMEC minus PCA and minus the best
    of the MRL-style head and the linear adapter, on the mean and on every retrieval set with
    at least ``min_queries`` scored queries (smaller sets are reported, not judged)."""
    methods = result["tables"].get(setting, {})
    if "smec" not in methods:
        return []
    rows = []
    big = [n for n, d in result["datasets"].items()
           if d["metric"] != "Spearman" and (d["n_queries"] or 0) >= min_queries]
    for key in sorted(methods["smec"], key=int, reverse=True):
        cell = methods["smec"][key]
        for where in ["mean"] + big:
            def score(m: str):
                c = methods.get(m, {}).get(key)
                if c is None:
                    return None
                return c["mean"] if where == "mean" else c["datasets"].get(where)
            smec, pca = score("smec"), score("pca")
            base = [s for s in (score("mrl"), score("linear")) if s is not None]
            rows.append({"dim": int(key), "where": where, "smec": smec,
                         "vs_pca": None if smec is None or pca is None else smec - pca,
                         "vs_best_baseline": None if smec is None or not base else smec - max(base),
                         "n": cell["n"] if where == "mean" else 1})
    return rows


def targets_markdown(result: dict) -> list[str]:
    rows = targets(result)
    if not rows:
        return []
    lines = ["## SMEC against PCA and the best baseline (unsupervised-queries; nDCG@10 points x 100)", "",
             "| dim | where | SMEC | SMEC - PCA | SMEC - best of MRL, linear |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        def pts(x):
            return "—" if x is None else f"{100 * x:+.1f}"
        lines.append(f"| {r['dim']} | {r['where']} | {_fmt(r['smec'])} | {pts(r['vs_pca'])} | "
                     f"{pts(r['vs_best_baseline'])} |")
    return lines + [""]


def suite_plot(result: dict, fh) -> None:
    """Mean nDCG@10 over the retrieval sets against dim, one panel per setting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = list(result["tables"].items()) or [("(none)", {})]
    fig = Figure(figsize=(4.6 * len(settings) + 0.6, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    for ax, (setting, methods) in zip(axes, settings):
        for method in order_methods(methods):
            pts = sorted((int(k), c["mean"]) for k, c in methods[method].items()
                         if k.isdigit() and c["mean"] is not None)
            if method == "full" and pts:
                ax.axhline(pts[0][1], color="black", linestyle="--", linewidth=1.1, label="full")
            elif len(pts) > 1:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(setting)
        ax.set_xlabel("dimension")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("mean nDCG@10 (retrieval sets)")
    axes[0].legend(fontsize="small")
    fig.savefig(fh, format="png")


def run_suite(cfg: Config, config_path: str | None, overrides: list[str]) -> dict:
    """``smec suite``: :class:`Suite` (setup -> run -> save)."""
    return execute(Suite(cfg, config_path, overrides))
