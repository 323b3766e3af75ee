"""Reading a config: defaults, then a YAML file, then ``section.key=value`` overrides, every
key and value checked; writing one next to a run's outputs; the reference of every key."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import SmecError
from ..io import atomic_write_text
from .schema import REMOVED_KEYS, Config

def _coerce(key: str, value: Any, typ) -> Any:
    """Check a YAML value against a dataclass field type (int accepted where float is)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):  # the first type the value fits
            try:
                return _coerce(key, value, arg)
            except SmecError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list):
            raise SmecError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(typ)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise SmecError(f"{key}: must be a finite number, got {value}")
    if typ is bool and not isinstance(value, bool):
        raise SmecError(f"{key}: expected true or false, got {value!r}")
    if typ in (int, float, str) and (not isinstance(value, typ) or isinstance(value, bool)):
        raise SmecError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if f"{prefix}{key}" in REMOVED_KEYS:
            raise SmecError(f"{source}: config key '{prefix}{key}' was removed: its value is now decided by "
                            f"{REMOVED_KEYS[prefix + key]}")
        if key not in known:
            raise SmecError(f"{source}: unknown config key '{prefix}{key}' (allowed: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in values.items():
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise SmecError(f"{source}: '{prefix}{key}' must be a mapping of keys")
            kwargs[key] = _build(typ, value, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _coerce(f"{source}: {prefix}{key}", value, typ)
    try:
        return cls(**kwargs)
    except SmecError as exc:
        if source == "defaults" or str(exc).startswith(source):
            raise
        raise SmecError(f"{source}: {exc}") from exc


def parse_overrides(items: list[str]) -> dict:
    """``["train.epochs=5", "run.dims=[96,48]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise SmecError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise SmecError(f"override '{item}': value is not valid YAML ({exc.problem})") from exc
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SmecError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then the overrides; every key checked."""
    values: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise SmecError(f"{path}: config file not found")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SmecError(f"{path}: cannot read the config file ({exc.strerror or exc})") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise SmecError(f"{path}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x})") from exc
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise SmecError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
        if not isinstance(values, dict):
            raise SmecError(f"{path}: top level must be a mapping of sections")
        if not isinstance(values.pop(RESOLVED, {}), dict):
            raise SmecError(f"{path}: '{RESOLVED}' must be a mapping (a run writes it; it is not read back)")
    cfg = _build(Config, values, "", source)
    if overrides:
        cfg = _build(Config, _merge(cfg.to_dict(), parse_overrides(overrides)), "", "command line")
    return cfg


RESOLVED = "resolved"
"""The section of a run's config.yaml that records values the run derived from the keys (each
setting's loss); :func:`load_config` skips it, so the file loads back as the config it was."""


def dump_config(cfg: Config, path: str | Path, resolved: dict | None = None) -> None:
    """Save the config next to a run's outputs (reloadable with :func:`load_config`), with the
    values the run derived from it under ``resolved``."""
    values = cfg.to_dict()
    if resolved:
        values[RESOLVED] = resolved
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def key_reference() -> list[tuple[str, str, str, str]]:
    """Every config key as ``(section.key, type, default, doc)``: the doc is the attribute's own
    docstring (the string right after it in its dataclass), else its entry in the class
    docstring's ``Attributes:`` section (``smec config --keys``)."""
    import ast
    import inspect
    import re

    rows = []
    sections = typing.get_type_hints(Config)
    for section in fields(Config):
        cls = sections[section.name]
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body
        own: dict[str, str] = {}
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str):
                own[node.target.id] = " ".join(nxt.value.value.split())
        listed: dict[str, str] = {}
        doc = inspect.getdoc(cls) or ""
        if "Attributes:" in doc:
            current = None
            for line in doc.split("Attributes:", 1)[1].splitlines():
                m = re.match(r"^    ([\w /]+?):\s*(.*)$", line)
                if m:
                    current = [k.strip() for k in m.group(1).split("/")]
                    for k in current:
                        listed[k] = m.group(2)
                elif current and line.startswith("        "):
                    for k in current:
                        listed[k] += " " + line.strip()
        hints = typing.get_type_hints(cls)
        defaults = cls()
        for f in fields(cls):
            typ = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
            rows.append((f"{section.name}.{f.name}", typ, repr(getattr(defaults, f.name)),
                         own.get(f.name) or " ".join(listed.get(f.name, "").split())))
    return rows
