"""What the user sees on the terminal besides results: other libraries' progress bars."""

from __future__ import annotations

import contextlib
import importlib
from typing import Iterator


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
