"""The structure of a run's ``results.json``: what it holds, its validation, and reading it.

``results.json`` holds::

    {"meta": {"dataset": str, "model": str, "full_dim": int, "dims": [int, ...],
              "loss": {setting: {temperature, infonce_weight, ...}}, ...},
     "settings": {setting: {method: {dim key: {metric: number}}}},
     "validation": {setting: {method: {dim key: {metric: number}}}},   # only with run.validation
     "timings": {step: seconds}}

A dim key is a dimension as a string (``"384"``, ``"96"``) or ``"sparse"`` (BM25).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import SmecError
from .method.registry import METHODS

#: Methods in report order (the registry's); anything else follows alphabetically.
METHOD_ORDER: tuple[str, ...] = tuple(METHODS)

#: Methods drawn as horizontal reference lines, not curves, in the plot.
REFERENCE_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.kind == "reference")

SPARSE_KEY = "sparse"

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


def to_builtin(value: Any) -> Any:
    """Turn numpy scalars/arrays and paths into JSON-native values, recursively."""
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    # numpy is optional here: duck-type its scalars and arrays.
    if hasattr(value, "tolist") and callable(value.tolist):
        return to_builtin(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def method_label(method: str) -> str:
    """How reports name a method (the registry's label; unknown methods by their name)."""
    return METHODS[method].label if method in METHODS else method


def order_methods(methods: Iterable[str]) -> list[str]:
    """Methods in report order: :data:`METHOD_ORDER` first, the rest alphabetically."""
    methods = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


def compressed_dims(results: Mapping[str, Any]) -> list[str]:
    """Compressed dim keys: meta's dims in their order, then extra ones found, largest first."""
    meta = results["meta"]
    full = str(meta["full_dim"])
    dims = [str(d) for d in meta["dims"] if str(d) != full]
    extra: set[str] = set()
    for methods in results["settings"].values():
        for by_dim in methods.values():
            extra.update(d for d in by_dim if d not in dims and d not in (full, SPARSE_KEY))
    return dims + sorted(extra, key=int, reverse=True)


def reference_value(by_dim: Mapping[str, Mapping[str, float]], full: str, metric: str) -> float | None:
    """The uncompressed column's value: the full dim, or BM25's sparse score."""
    for key in (full, SPARSE_KEY):
        if key in by_dim and metric in by_dim[key]:
            return float(by_dim[key][metric])
    return None
