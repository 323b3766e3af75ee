"""Losses against hand-computed values.

listwise_kl, 1 anchor x 2 candidates, teacher sims [1, 0], student sims [0, 0], temperature 1:
    p = softmax([1, 0]) = [e/(1+e), 1/(1+e)] = [0.731059, 0.268941]
    q = softmax([0, 0]) = [0.5, 0.5]
    KL(p || q) = 0.731059 * ln(0.731059/0.5) + 0.268941 * ln(0.268941/0.5)
               = 0.731059 * 0.379885       + 0.268941 * (-0.620115)
               = 0.277719 - 0.166774 = 0.110944
    Temperature 0.5 on teacher [0.5, 0] gives the same logits [1, 0], hence the same value.

pairwise_mse, student [[1, 2], [3, 4]], teacher [[0, 2], [1, 4]]:
    squared differences [[1, 0], [4, 0]] -> mean 5/4 = 1.25
    mask [[T, F], [T, T]] -> (1 + 4 + 0) / 3 = 5/3

info_nce, query [1, 0], docs [[1, 0], [0, 1]], positive = doc 0, temperature 1:
    logits [1, 0] -> -log(e / (e + 1)) = log(1 + e^-1) = 0.313262
    temperature 0.5 -> logits [2, 0] -> log(1 + e^-2) = 0.126928
    with a third doc [1, 0] (another positive) unmasked: -log(e / (2e + 1)) = log(2 + e^-1) = 0.861995;
    masked out, it is the 1x2 case again: 0.313262
"""

from __future__ import annotations

import math

import pytest
import torch

from smec_dist.method.losses import info_nce, listwise_kl, pairwise_mse

KL_1x2 = 0.7310585786 * math.log(0.7310585786 / 0.5) + 0.2689414214 * math.log(0.2689414214 / 0.5)


def test_hand_value_constant():
    assert KL_1x2 == pytest.approx(0.110944, abs=1e-6)


# --------------------------------------------------------------------------- listwise_kl


def test_listwise_kl_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 7, generator=g)
    for t in (0.02, 1.0):
        assert float(listwise_kl(s, s.clone(), t)) == pytest.approx(0.0, abs=1e-6)


def test_listwise_kl_positive_when_different():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    assert float(listwise_kl(s, t, 0.5)) > 1e-3
    # shifting a row by a constant does not change its softmax: still zero
    assert float(listwise_kl(t + 3.0, t, 0.5)) == pytest.approx(0.0, abs=1e-5)


def test_listwise_kl_hand_computed_1x2():
    student = torch.tensor([[0.0, 0.0]])
    assert float(listwise_kl(student, torch.tensor([[1.0, 0.0]]), 1.0)) == pytest.approx(KL_1x2, rel=1e-5)
    assert float(listwise_kl(student, torch.tensor([[0.5, 0.0]]), 0.5)) == pytest.approx(KL_1x2, rel=1e-5)


def test_listwise_kl_direction_is_teacher_to_student():
    # KL(p || q) with p from the teacher: swapping roles changes the value
    # KL(q || p) = 0.5 ln(0.5/0.731059) + 0.5 ln(0.5/0.268941) = 0.5 (-0.379885 + 0.620115) = 0.120115
    v = float(listwise_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), 1.0))
    assert v == pytest.approx(0.5 * (math.log(0.5 / 0.7310585786) + math.log(0.5 / 0.2689414214)), rel=1e-5)
    assert v != pytest.approx(KL_1x2, rel=1e-3)


def test_listwise_kl_is_mean_over_rows():
    student = torch.tensor([[0.0, 0.0], [0.3, -0.2]])
    teacher = torch.tensor([[1.0, 0.0], [0.3, -0.2]])
    assert float(listwise_kl(student, teacher, 1.0)) == pytest.approx(KL_1x2 / 2, rel=1e-5)


def test_listwise_kl_mask():
    mask = torch.tensor([[True, True, False]])
    student = torch.tensor([[0.0, 0.0, -3.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 5.0]])
    v = listwise_kl(student, teacher, 1.0, mask)
    assert float(v.detach()) == pytest.approx(KL_1x2, rel=1e-5)
    # masked entries do not change the value, whatever they hold
    for s3, t3 in [(100.0, -100.0), (-7.0, 7.0), (0.0, 1.0)]:
        other = listwise_kl(torch.tensor([[0.0, 0.0, s3]]), torch.tensor([[1.0, 0.0, t3]]), 1.0, mask)
        assert float(other) == pytest.approx(KL_1x2, rel=1e-5)
    # and the gradient stays finite, zero on the masked entry
    v.backward()
    assert torch.all(torch.isfinite(student.grad))
    assert float(student.grad[0, 2]) == 0.0
    # without the mask the third entry counts
    assert float(listwise_kl(student.detach(), teacher, 1.0)) != pytest.approx(KL_1x2, rel=1e-3)


def test_listwise_kl_gradient_direction():
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    listwise_kl(student, torch.tensor([[1.0, 0.0]]), 1.0).backward()
    # d KL / d s = q - p = [0.5 - 0.731059, 0.5 - 0.268941]
    torch.testing.assert_close(student.grad, torch.tensor([[0.5 - 0.7310586, 0.5 - 0.2689414]]))


# --------------------------------------------------------------------------- pairwise_mse


def test_pairwise_mse_hand_computed():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    assert float(pairwise_mse(s, t)) == pytest.approx(1.25)
    mask = torch.tensor([[True, False], [True, True]])
    assert float(pairwise_mse(s, t, mask)) == pytest.approx(5 / 3)
    assert float(pairwise_mse(s, s)) == 0.0


def test_pairwise_mse_empty_mask_is_zero():
    s, t = torch.ones(2, 2), torch.zeros(2, 2)
    assert float(pairwise_mse(s, t, torch.zeros(2, 2, dtype=torch.bool))) == 0.0


# --------------------------------------------------------------------------- info_nce


def test_info_nce_hand_computed_1x2():
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0])
    assert float(info_nce(q, docs, labels, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)
    assert float(info_nce(q, docs, labels, 1.0)) == pytest.approx(0.313262, abs=1e-6)
    assert float(info_nce(q, docs, labels, 0.5)) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)
    # positive at index 1: logits [1, 0] with label 1 -> -log(1 / (e + 1)) = log(1 + e)
    assert float(info_nce(q, docs, torch.tensor([1]), 1.0)) == pytest.approx(math.log(1 + math.e), rel=1e-5)


def test_info_nce_mask_removes_a_candidate():
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0])
    unmasked = float(info_nce(q, docs, labels, 1.0))
    assert unmasked == pytest.approx(math.log(2 + math.exp(-1)), rel=1e-5)
    mask = torch.tensor([[True, True, False]])
    assert float(info_nce(q, docs, labels, 1.0, mask)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)
    # removing every negative leaves nothing to contrast: loss 0
    only_pos = torch.tensor([[True, False, False]])
    assert float(info_nce(q, docs, labels, 1.0, only_pos)) == pytest.approx(0.0, abs=1e-7)


def test_info_nce_mean_over_queries():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # both queries: logits [1, 0] against their own positive -> log(1 + e^-1) each
    v = float(info_nce(q, docs, torch.tensor([0, 1]), 1.0))
    assert v == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)
