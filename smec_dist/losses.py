"""Losses for training a compression head against a teacher.

Unsupervised losses compare the student's (compressed) similarities with the teacher's
(full-width) ones; the supervised loss is InfoNCE over labelled (query, document) pairs.

References:
    Yoon et al., "Matryoshka-Adaptor: Unsupervised and Supervised Tuning for Smaller
    Embedding Dimensions", EMNLP 2024 (top-k and pairwise similarity losses).
    Zhang et al., "SMEC", EMNLP 2025.
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def listwise_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) between softmax distributions over each row's candidates.

    Preserves the ranking at the top of each anchor's list, which is what nDCG@10 reads.

    Args:
        student: (n, m) student similarities.
        teacher: (n, m) teacher similarities.
        temperature: softmax temperature for both.
        mask: (n, m) bool, True where a candidate takes part.
    """
    if mask is not None:
        student = student.masked_fill(~mask, float("-inf"))
        teacher = teacher.masked_fill(~mask, float("-inf"))
    p = F.softmax(teacher / temperature, dim=-1)  # (n, m)
    log_q = F.log_softmax(student / temperature, dim=-1)  # (n, m)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    terms = p * (log_p - log_q)
    terms = torch.where(p > 0, terms, torch.zeros_like(terms))  # masked entries: 0 * (-inf)
    return terms.sum(-1).mean()


def pairwise_mse(student: torch.Tensor, teacher: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of similarities (Matryoshka-Adaptor's pairwise loss)."""
    diff = (student - teacher) ** 2
    if mask is None:
        return diff.mean()
    return (diff * mask).sum() / mask.sum().clamp(min=1)


def info_nce(query: torch.Tensor, docs: torch.Tensor, labels: torch.Tensor, temperature: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of each query against all docs (in-batch and memory negatives).

    Args:
        query: (n, d) normalised query embeddings.
        docs: (m, d) normalised candidates; ``docs[labels[i]]`` is query i's positive.
        labels: (n,) long.
        mask: (n, m) bool, False for candidates to ignore (other positives of the query).
    """
    logits = query @ docs.T / temperature  # (n, m)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, labels)
