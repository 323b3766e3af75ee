"""Retrieval metrics (nDCG, MRR, Recall, MAP, P at cut-offs) computed with pytrec_eval.

The numbers follow BEIR's conventions so they can be compared with published tables:
``ndcg_cut``, ``map_cut``, ``recall`` and ``P`` from trec_eval, and MRR@k as trec_eval's
``recip_rank`` on each query's run truncated to its top k.

Two deliberate differences from calling pytrec_eval directly:

* Ties in scores are broken deterministically (score descending, then doc id ascending) and
  the run handed to trec_eval carries rank-derived scores, because trec_eval's own tie
  breaking (doc id *descending*) would otherwise silently disagree with the truncation we do
  for MRR@k and with what a reader expects.
* Every query of the qrels is counted, a query absent from the run (or with an empty run)
  scores 0 on every metric; trec_eval alone would skip it and inflate the mean.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import pytrec_eval

from smec_dist.errors import SmecError

logger = logging.getLogger(__name__)

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

#: The four metrics the report leads with, in display order.
HEADLINE: tuple[str, ...] = ("nDCG@10", "MRR@10", "Recall@100", "MAP@100")

# Our metric name -> trec_eval measure family (MRR is handled separately, see module doc).
_TREC_FAMILIES: dict[str, str] = {
    "nDCG": "ndcg_cut",
    "MAP": "map_cut",
    "Recall": "recall",
    "P": "P",
}


def metric_names(k_values: Iterable[int] = (10, 100)) -> list[str]:
    """Names of the metrics :func:`evaluate_run` returns, in its order.

    Args:
        k_values: The cut-offs.

    Returns:
        For each k: ``nDCG@k``, ``MRR@k``, ``Recall@k``, ``MAP@k``, ``P@k``.
    """
    names = []
    for k in _check_k_values(k_values):
        names += [f"nDCG@{k}", f"MRR@{k}", f"Recall@{k}", f"MAP@{k}", f"P@{k}"]
    return names


def evaluate_run(
    qrels: Qrels,
    run: Run,
    k_values: Iterable[int] = (10, 100),
) -> dict[str, float]:
    """Mean retrieval metrics of a run over all queries of the qrels.

    Args:
        qrels: ``{query_id: {doc_id: relevance}}``; relevance is an int, graded relevance is
            allowed and a value <= 0 means not relevant.
        run: ``{query_id: {doc_id: score}}``, higher score = better. Queries not in the qrels
            are ignored.
        k_values: Cut-offs; each yields ``nDCG@k``, ``MRR@k``, ``Recall@k``, ``MAP@k``, ``P@k``.

    Returns:
        ``{metric name: mean over the qrels' queries}``. A query of the qrels that has no
        entry (or an empty one) in the run counts as 0; a query without any relevant doc
        also scores 0 (it stays in the denominator, as the brief for this project asks).

    Raises:
        SmecError: If the qrels are empty or a k is not a positive int.
    """
    ks = _check_k_values(k_values)
    table = _per_query_table(qrels, run, ks)
    names = metric_names(ks)
    n = len(table)
    return {name: sum(row[name] for row in table.values()) / n for name in names}


def per_query(
    qrels: Qrels,
    run: Run,
    metric: str = "nDCG@10",
) -> dict[str, float]:
    """One metric for each query of the qrels, for paired significance tests.

    Args:
        qrels: As for :func:`evaluate_run`.
        run: As for :func:`evaluate_run`.
        metric: A name of the form ``<nDCG|MRR|Recall|MAP|P>@k``; default ``nDCG@10``.

    Returns:
        ``{query_id: value}`` for every query of the qrels (0 for queries missing from the
        run), in the qrels' order.

    Raises:
        SmecError: If the metric name is not understood or the qrels are empty.
    """
    family, _, k_text = metric.partition("@")
    if family not in {*_TREC_FAMILIES, "MRR"} or not k_text.isdigit() or int(k_text) < 1:
        raise SmecError(
            f"unknown metric {metric!r}: expected one of nDCG@k, MRR@k, Recall@k, MAP@k, P@k"
        )
    table = _per_query_table(qrels, run, [int(k_text)])
    return {qid: row[metric] for qid, row in table.items()}


def sorted_docs(doc_scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's run as ``(doc_id, score)`` pairs, best first, ties by doc id ascending.

    Args:
        doc_scores: ``{doc_id: score}`` for one query.

    Returns:
        The pairs in deterministic rank order.
    """
    return sorted(doc_scores.items(), key=lambda item: (-float(item[1]), item[0]))


def _check_k_values(k_values: Iterable[int]) -> list[int]:
    """Validate and de-duplicate cut-offs, keeping their order."""
    ks: list[int] = []
    for k in k_values:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SmecError(f"k_values: cut-off {k!r} is not a positive integer")
        if k not in ks:
            ks.append(k)
    if not ks:
        raise SmecError("k_values: at least one cut-off is needed")
    return ks


def _prepare_qrels(qrels: Qrels) -> dict[str, dict[str, int]]:
    """Qrels as trec_eval wants them: str ids, int grades, negatives clipped to 0.

    Negative grades (some collections use -1/-2 for "judged harmful") would otherwise enter
    nDCG as negative gains; the project treats every grade <= 0 simply as not relevant.
    """
    if not qrels:
        raise SmecError("qrels: no queries to evaluate")
    prepared: dict[str, dict[str, int]] = {}
    for qid, docs in qrels.items():
        row: dict[str, int] = {}
        for did, rel in docs.items():
            try:
                grade = int(rel)
            except (TypeError, ValueError):
                raise SmecError(
                    f"qrels: relevance of query {qid!r} doc {did!r} is not an int: {rel!r}"
                ) from None
            row[str(did)] = max(grade, 0)
        prepared[str(qid)] = row
    return prepared


def _ranked_run(run: Run, qids: Iterable[str]) -> dict[str, list[str]]:
    """For each evaluated query with a non-empty run, its doc ids in rank order."""
    ranked: dict[str, list[str]] = {}
    for qid in qids:
        docs = run.get(qid)
        if not docs:
            continue
        for did, score in docs.items():
            if not math.isfinite(float(score)):
                raise SmecError(f"run: score of query {qid!r} doc {did!r} is not finite: {score!r}")
        ranked[qid] = [did for did, _ in sorted_docs({str(d): s for d, s in docs.items()})]
    return ranked


def _rank_scores(ranked: Mapping[str, list[str]], depth: int | None = None) -> dict[str, dict[str, float]]:
    """A run trec_eval cannot reorder: scores n, n-1, ..., 1 following our rank order."""
    out: dict[str, dict[str, float]] = {}
    for qid, docs in ranked.items():
        docs = docs if depth is None else docs[:depth]
        n = len(docs)
        out[qid] = {did: float(n - i) for i, did in enumerate(docs)}
    return out


def _per_query_table(qrels: Qrels, run: Run, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Every metric for every qrels query, zeros where the run has nothing."""
    prepared = _prepare_qrels(qrels)
    # Keys may arrive as non-str (e.g. ints from a loader); trec_eval needs str, and so
    # does the lookup below, so normalise the run's query ids once.
    str_run: dict[str, Mapping[str, float]] = {str(q): d for q, d in run.items()}
    ranked = _ranked_run(str_run, prepared)
    names = metric_names(ks)
    table = {qid: dict.fromkeys(names, 0.0) for qid in prepared}

    missing = len(prepared) - len(ranked)
    if missing:
        logger.debug("%d of %d qrels queries have no run; they score 0", missing, len(prepared))
    if not ranked:
        return table

    # trec_eval only sees queries present in both; others keep their zeros.
    eval_qrels = {qid: prepared[qid] for qid in ranked}
    cuts = ",".join(str(k) for k in ks)
    measures = {f"{family}.{cuts}" for family in _TREC_FAMILIES.values()}
    scores = pytrec_eval.RelevanceEvaluator(eval_qrels, measures).evaluate(_rank_scores(ranked))
    for qid, values in scores.items():
        for ours, family in _TREC_FAMILIES.items():
            for k in ks:
                table[qid][f"{ours}@{k}"] = float(values[f"{family}_{k}"])

    # recip_rank has no cut-off in trec_eval, so truncate the run per k (as BEIR does).
    rr = pytrec_eval.RelevanceEvaluator(eval_qrels, {"recip_rank"})
    for k in ks:
        for qid, values in rr.evaluate(_rank_scores(ranked, depth=k)).items():
            table[qid][f"MRR@{k}"] = float(values["recip_rank"])
    return table
