"""What the user sees besides results: progress bars (on a terminal only) and other libraries'
bars and log noise."""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Iterator


def bars_wanted(setting: bool | None = None) -> bool:
    """Whether to draw progress bars: ``setting`` when given (``run.progress``, ``-q``), else
    only when stderr is a terminal: a log file or a CI console gets no bar lines."""
    if setting is not None:
        return bool(setting)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextlib.contextmanager
def bars_off(*libraries: str) -> Iterator[None]:
    """Turn off the progress bars of ``libraries`` (``"transformers"``, ``"datasets"``: both
    keep the switch in ``<library>.utils.logging``) for the duration, then restore them."""
    switches = [importlib.import_module(f"{name}.utils.logging") for name in libraries]
    was = [s.is_progress_bar_enabled() for s in switches]
    for s in switches:
        s.disable_progress_bar()
    try:
        yield
    finally:
        for s, on in zip(switches, was):
            if on:
                s.enable_progress_bar()
