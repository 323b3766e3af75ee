"""The one registry of methods: a name maps to how it is built, trained and labelled.

The config (which names ``run.methods`` accepts), the CLI (``smec compare --methods``), the
report (row order and labels) and the jobs (what to build and train) all read :data:`METHODS`.
Methods are listed in report order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .baselines import (CurriculumHead, FixedHead, MultiHead, PrefixHead, SingleHead, curriculum_phases,
                        multi_phases, prefix_phases, single_phases)
from .phase import Basis, Phase
from .smrl import SMECHead, smec_phases


@dataclass(frozen=True)
class Method:
    """One method of the comparison.

    Attributes:
        name: the key in configs, results.json and reports.
        label: how the report and the plot name it.
        kind: ``reference`` (the uncompressed backbone, BM25: one row, not per dim),
            ``fixed`` (computed, not trained: truncation, PCA) or ``trained``.
        head: the head class of a trained method.
        phases: builds a trained head's phases: ``phases(head, basis, cfg)``.
        sampler: where a trained head's hard samples come from: ``xbm`` (the S-XBM queue) or
            ``exact`` (an exact search of the whole corpus: the baselines have no memory).
        default: computed by ``smec run`` unless ``run.methods`` says otherwise (``smec
            compare`` runs every method).
        full_width: a trained head that is also scored at the backbone's full width.
    """

    name: str
    label: str
    kind: str
    head: type[nn.Module] | None = None
    phases: Callable[[nn.Module, Basis, object], list[Phase]] | None = None
    sampler: str | None = None
    default: bool = True
    full_width: bool = False

    def build(self, full_dim: int, dims: list[int], cfg) -> nn.Module:
        """A fresh head of a trained method (``cfg``: ``hidden``, and SMEC's ``ads_tau`` / ``ads_noise``)."""
        if self.head is SMECHead:
            return SMECHead(full_dim, dims, hidden=cfg.hidden, tau=cfg.ads_tau, noise=cfg.ads_noise)
        return self.head(full_dim, dims, hidden=cfg.hidden)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", "full", "reference"),
    Method("bm25", "bm25 (sparse)", "reference"),
    Method("truncation", "truncation", "fixed"),
    Method("pca", "pca", "fixed"),
    Method("single", "single", "trained", SingleHead, single_phases, "exact", default=False, full_width=True),
    Method("mrl", "mrl", "trained", PrefixHead, prefix_phases, "exact"),
    Method("cmrl", "cmrl", "trained", CurriculumHead, curriculum_phases, "exact", default=False),
    Method("linear", "linear", "trained", MultiHead, multi_phases, "exact"),
    Method("smec", "smec", "trained", SMECHead, smec_phases, "xbm"),
)}

DEFAULT_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.default)
"""What ``smec run`` computes unless ``run.methods`` says otherwise."""

COMPARE_METHODS: tuple[str, ...] = tuple(METHODS)
"""What ``smec compare`` computes unless ``--methods`` says otherwise: every method."""

TRAINED: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.kind == "trained")

HEAD_KINDS: dict[str, type[nn.Module]] = {m.head.kind: m.head for m in METHODS.values() if m.head is not None}
HEAD_KINDS[FixedHead.kind] = FixedHead  # PCA and truncation, exported as heads
"""Head file kinds (the ``kind`` in a saved head's layout) -> head class."""


def phases_for(head: nn.Module, basis: Basis, cfg) -> list[Phase]:
    """The phases that train ``head`` (looked up by its class)."""
    for m in METHODS.values():
        if m.head is type(head):
            return m.phases(head, basis, cfg)
    raise TypeError(f"no method trains a {type(head).__name__}")
