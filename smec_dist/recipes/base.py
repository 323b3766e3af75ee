"""The one lifecycle of every job: setup -> run -> save -> cleanup.

``setup`` does every check that can fail before any long work (encoding, training);
``run`` computes; ``save`` writes the artifacts; ``cleanup`` always runs (trackers, process
groups), also after an error.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import SmecError
from ..io import recover_run


class Recipe:
    """A job with the lifecycle above; subclasses fill in the four steps."""

    def setup(self) -> None:
        """Load and check everything (data, config, backbone); nothing long runs yet."""

    def run(self):
        raise NotImplementedError

    def save(self, result):
        """Write the artifacts of ``result``; returns what the caller gets."""
        return result

    def cleanup(self) -> None:
        """Release what ``setup`` acquired; runs after an error too."""


def execute(recipe: Recipe):
    """setup -> run -> save, then cleanup whatever happened."""
    try:
        recipe.setup()
        return recipe.save(recipe.run())
    finally:
        recipe.cleanup()


#: what marks a folder as holding a run's results
RESULT_NAMES = ("results.json", "report.md", "plot.png", "manifest.json", "config.yaml", "models", "train_log.json",
                "stages", "checkpoints")


def held_results(out: Path) -> list[str]:
    """The result files and folders of a run that ``out`` already holds."""
    return [name for name in RESULT_NAMES if (out / name).exists()] if out.is_dir() else []


def stage_run_folder(out: Path, overwrite: bool) -> Path:
    """Check that ``out`` may take a run's results and make the folder they are written into
    first, beside it (``.<name>.<random>.tmp``; :func:`smec_dist.io.publish_run` swaps it in at
    the end). Fails before any work: ``out`` a file, ``out`` holding another run's results
    without ``overwrite``, or no write access."""
    recover_run(out)  # a kill in the middle of an earlier publish: put that run back first
    if out.exists() and not out.is_dir():
        raise SmecError(f"run.output_dir: {out} is a file, not a folder")
    held = held_results(out)
    if held and not overwrite:
        raise SmecError(f"run.output_dir: {out} holds another run's results ({', '.join(held)}); pass "
                        f"--overwrite (run.overwrite=true) to replace them, or name another run.output_dir")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_stages(out)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise SmecError(f"run.output_dir: cannot write {out} ({exc.strerror or exc})") from None


def _clear_stale_stages(out: Path) -> None:
    """Remove the staging folders that killed runs left beside ``out`` (their process is gone)."""
    for stage in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = stage.name[len(out.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
