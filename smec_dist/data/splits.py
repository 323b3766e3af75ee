"""Choosing which judged queries do what: anchors to train against, a validation hold-out,
and the qrels left to evaluate on.

Anchors (:func:`select_anchor_queries`) come from another qrels split, a query file
(:mod:`.queries`) or a seeded hold-out of the evaluation split; :func:`eval_qrels` then drops
them from evaluation, so that no anchor is also scored.
"""

from __future__ import annotations

import random
from typing import Sequence

from ..errors import SmecError
from .beir import BeirDataset
from .lines import short_repr
from .queries import load_query_file

ANCHOR_SPEC_FORMS = "'split:<name>', 'file:<path>', 'holdout:<fraction in (0, 1)>' or 'none'"


def _require_split(ds: BeirDataset, split: str) -> dict[str, dict[str, int]]:
    if split not in ds.qrels:
        raise SmecError(
            f"{ds.root}: split '{split}' is not loaded (splits present: {', '.join(ds.splits) or 'none'})"
        )
    return ds.qrels[split]


def select_anchor_queries(
    ds: BeirDataset, spec: str, eval_split: str, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Chooses the anchor queries that the compressor trains against.

    Args:
        ds: The loaded dataset.
        spec: One of ``"split:<name>"`` (the queries judged in that qrels split),
            ``"file:<path>"`` (see :func:`load_query_file`), ``"holdout:<fraction>"`` (a
            seeded random fraction of the evaluation split's queries) or ``"none"``.
        eval_split: The split that will be evaluated on.
        seed: Seed for ``holdout``; the same seed gives the same queries.

    Returns:
        ``(anchor_texts, anchor_query_ids)``. Pass the ids to :func:`eval_qrels` so that
        no anchor is also scored in evaluation (required for ``holdout``).

    Raises:
        SmecError: A malformed spec, an absent split, or an unreadable query file.
    """
    text = spec.strip() if isinstance(spec, str) else ""
    kind, sep, value = text.partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if text.lower() == "none":
        return [], []
    if kind == "split" and sep and value:
        if value == eval_split:
            # Anchors drawn from the judged evaluation queries would leak into the metric.
            raise SmecError(
                f"anchor spec '{spec}': the anchor split is the evaluation split; "
                f"use 'holdout:<fraction>' to split it"
            )
        ids = list(_require_split(ds, value))
        missing = [q for q in ids if q not in ds.queries]
        if missing:
            raise SmecError(f"anchor spec '{spec}': query id {short_repr(missing[0])} is not in queries.jsonl")
        return [ds.queries[q] for q in ids], ids
    if kind == "file" and sep and value:
        pairs = load_query_file(value)
        return [t for _, t in pairs], [q for q, _ in pairs]
    if kind == "holdout" and sep and value:
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if not 0.0 < fraction < 1.0:
            raise SmecError(f"anchor spec '{spec}': holdout fraction must be a number in (0, 1)")
        pool = list(_require_split(ds, eval_split))
        if len(pool) < 2:
            raise SmecError(f"anchor spec '{spec}': split '{eval_split}' has too few queries to hold out")
        ids = seeded_part(pool, fraction, seed)
        return [ds.queries[q] for q in ids], ids
    raise SmecError(f"anchor spec '{spec}' is not valid: use {ANCHOR_SPEC_FORMS}")


def seeded_part(pool: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded random ``fraction`` of ``pool`` (at least one, never all), in pool order."""
    count = min(max(round(fraction * len(pool)), 1), len(pool) - 1)
    chosen = set(random.Random(seed).sample(pool, count))
    return [q for q in pool if q in chosen]


def validation_queries(ds: BeirDataset, split: str, fraction: float, seed: int = 0) -> list[str]:
    """Query ids held out of a judged split for validation (choosing settings off the test set).

    Args:
        ds: The loaded dataset.
        split: The judged split to hold out from (the supervised split, usually ``train``).
        fraction: The part of its queries with a positive judgment to hold out, in (0, 1).
        seed: The same seed gives the same queries.

    Returns:
        Query ids in qrels order; the caller drops them from training (anchors and judged
        pairs) and scores them.

    Raises:
        SmecError: The split is absent, or has fewer than two judged queries.
    """
    judged = [q for q, docs in _require_split(ds, split).items()
              if q in ds.queries and any(score > 0 for score in docs.values())]
    if len(judged) < 2:
        raise SmecError(f"{ds.root}: split '{split}' has {len(judged)} judged quer"
                        f"{'y' if len(judged) == 1 else 'ies'}; too few to hold some out for validation")
    return seeded_part(judged, fraction, seed)


def eval_qrels(
    ds: BeirDataset, eval_split: str, exclude_ids: Sequence[str] | set[str] = ()
) -> dict[str, dict[str, int]]:
    """Returns the evaluation split's qrels without the excluded (anchor) queries.

    Args:
        ds: The loaded dataset.
        eval_split: The split to evaluate on.
        exclude_ids: Query ids to drop, typically the anchors from
            :func:`select_anchor_queries`.

    Returns:
        Query id -> doc id -> score, a copy, in file order.

    Raises:
        SmecError: The split is absent, or no query is left.
    """
    qrels = _require_split(ds, eval_split)
    drop = set(exclude_ids)
    kept = {q: dict(docs) for q, docs in qrels.items() if q not in drop}
    if not kept:
        raise SmecError(
            f"{ds.root}: split '{eval_split}' has no queries left after excluding {len(drop)} anchor id(s)"
        )
    return kept
