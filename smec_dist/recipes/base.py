"""The one lifecycle of every job: setup -> run -> save -> cleanup.

``setup`` does every check that can fail before any long work (encoding, training);
``run`` computes; ``save`` writes the artifacts; ``cleanup`` always runs (trackers, process
groups), also after an error.
"""

from __future__ import annotations


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
