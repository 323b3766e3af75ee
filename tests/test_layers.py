"""The package's layers import only downward (docs: STYLE.md, the house plan).

``method/`` (the method) knows nothing of training loops, jobs, run folders, configs or
launchers; ``train/`` knows nothing of the jobs built on it; only ``cli.py`` sees argparse.
Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smec_dist"

#: what a part of the package must never import (by top-level name inside smec_dist)
FORBIDDEN = {
    "method": {"train", "recipes", "cache", "config", "dist", "cli", "backbone", "data", "evaluation", "report",
               "results", "plot", "tracking", "plan", "plan_report"},
    "train": {"recipes", "cli"},
    "data": {"method", "train", "recipes", "cli", "config"},
    "evaluation": {"train", "recipes", "cli"},
    "recipes": {"cli"},
}
ONLY_CLI = {"argparse"}  # standard modules only cli.py may import


def _imports(path: Path, package: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``: ``smec_dist.<part>`` names for our own modules
    (relative imports resolved), the top-level name for the others."""
    rel = path.relative_to(package.parent).with_suffix("")
    here = list(rel.parts if path.name != "__init__.py" else rel.parts[:-1])
    if path.name != "__init__.py":
        here = here[:-1]  # the package the module lives in
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
                if not node.module:  # `from . import dist`: each name is a module
                    out += [(node.lineno, ".".join(parts + [a.name])) for a in node.names]
                    continue
                out.append((node.lineno, ".".join(parts)))
            else:
                out.append((node.lineno, node.module))
    return out


def violations(package: Path) -> list[str]:
    """Every import that breaks :data:`FORBIDDEN` or :data:`ONLY_CLI`, as ``file:line: ...``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        part = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for line, module in _imports(path, package):
            names = module.split(".")
            if names[0] == package.name and len(names) > 1:
                target = names[1]
                if target in FORBIDDEN.get(part, set()) or (target == "cli" and part != "cli"):
                    found.append(f"{rel}:{line}: {part} imports {module}")
            elif names[0] in ONLY_CLI and part != "cli":
                found.append(f"{rel}:{line}: {part} imports {module} (only cli.py may)")
    return found


def test_layers_import_only_downward():
    assert violations(PACKAGE) == []


@pytest.mark.parametrize("where, line, expected", [
    ("method/ads.py", "from ..train.loop import Trainer", "method imports smec_dist.train.loop"),
    ("method/smrl.py", "from .. import dist", "method imports smec_dist.dist"),
    ("method/losses.py", "import smec_dist.config", "method imports smec_dist.config"),
    ("method/export.py", "    from ..cache import load_cache", "method imports smec_dist.cache"),
    ("train/loop.py", "from ..recipes.adapter import Job", "train imports smec_dist.recipes.adapter"),
    ("recipes/adapter.py", "from .. import cli", "recipes imports smec_dist.cli"),
    ("report.py", "import argparse", "report imports argparse (only cli.py may)"),
])
def test_a_forbidden_import_is_caught(tmp_path, where, line, expected):
    """The check above is not vacuous: each kind of forbidden import, added to a copy of the
    package, is reported with its file and line."""
    copy = tmp_path / "smec_dist"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / where
    text = target.read_text(encoding="utf-8")
    if line.startswith("    "):  # an import inside a function counts too
        line = "def _late():\n" + line + "\n"
    target.write_text(text + "\n" + line + "\n", encoding="utf-8")
    found = violations(copy)
    assert len(found) == 1 and found[0].startswith(where + ":") and found[0].endswith(expected), found
