"""What the benchmark scripts share: writing their JSON and printing their closing lines."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``results`` to ``path`` (folder created; written to a temp name, then renamed, so
    an interrupted run never leaves a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def print_results(table: str, results: Mapping[str, Any], json_out: str | os.PathLike) -> None:
    """The table, the load average after the run (``results["meta"]["loadavg_after"]``) and
    where the JSON went."""
    print()
    print(table)
    print(f"loadavg after: {', '.join(f'{x:.2f}' for x in results['meta']['loadavg_after'])}")
    print(f"json: {write_json(results, json_out)}")
