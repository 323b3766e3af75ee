"""ADS: straight-through top-k masking, the relaxed top-k, freezing, argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smec_dist.method.ads import ADSelector, Masked, relaxed_topk


def _x(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Inputs with no zero entry (so a zero column in the output can only come from the mask)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) + 0.5  # entries in [0.5, 1.5)


def _scores(d: int, seed: int = 1) -> torch.Tensor:
    """Distinct scores in a shuffled order (so the top-k is not simply the first k dims)."""
    g = torch.Generator().manual_seed(seed)
    return torch.linspace(1.0, -1.0, d)[torch.randperm(d, generator=g)]


# --------------------------------------------------------------------------- forward shapes


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_masked_forward_keeps_exactly_k_columns(noise):
    d, k, n = 12, 5, 7
    ads = ADSelector(d, k, noise=noise, init_scores=_scores(d))
    x = _x(n, d)
    torch.manual_seed(0)
    for _ in range(10):  # Gumbel noise changes the selection, never its size
        out = ads(x, masked=True)
        assert out.shape == (n, d)
        kept = (out != 0).any(0)
        assert int(kept.sum()) == k
        assert torch.equal((out != 0), kept.expand(n, d))  # whole columns are kept or dropped
        torch.testing.assert_close(out[:, kept], x[:, kept])  # kept columns pass unchanged
        assert torch.all(out[:, ~kept] == 0)


def test_gathered_forward_is_the_index_list():
    d, k, n = 12, 5, 7
    ads = ADSelector(d, k, init_scores=_scores(d))
    x = _x(n, d)
    out = ads(x, masked=False)
    assert out.shape == (n, k)
    idx = ads.index()
    assert idx.shape == (k,)
    assert torch.equal(idx, torch.sort(idx).values)  # ascending position order
    assert torch.equal(out, x[:, idx])


def test_gathered_and_masked_agree_without_noise():
    """Training (masked, normalised) and inference (gathered, normalised) give the same inner products."""
    d, k = 10, 4
    ads = ADSelector(d, k, noise=0.0, init_scores=_scores(d))
    a, b = _x(3, d, seed=1), _x(5, d, seed=2)
    sims_masked = F.normalize(ads(a, True), dim=-1) @ F.normalize(ads(b, True), dim=-1).T
    sims_gather = F.normalize(ads(a, False), dim=-1) @ F.normalize(ads(b, False), dim=-1).T
    torch.testing.assert_close(sims_masked, sims_gather)


def test_default_scores_keep_the_first_k_dims():
    ads = ADSelector(9, 3)
    assert ads.index().tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- gradient


def test_gradient_reaches_every_score_kept_or_not():
    d, k = 10, 4
    ads = ADSelector(d, k, noise=0.0)  # default scores linspace(1, -1): kept = dims 0..3
    x = _x(6, d)  # positive entries: d(sum out)/d(mask_i) = sum_n x_ni > 0 for every i
    ads(x, masked=True).sum().backward()
    grad = ads.scores.grad
    assert grad is not None and grad.shape == (d,)
    assert torch.all(torch.isfinite(grad))
    assert torch.all(grad > 0)  # sigmoid' > 0 everywhere: every dim, kept or dropped, moves
    dropped = torch.ones(d, dtype=torch.bool)
    dropped[ads.index()] = False
    assert dropped.sum() == d - k and torch.all(grad[dropped] != 0)


def test_gradient_with_noise_is_finite_and_reaches_dropped_dims():
    d, k = 10, 4
    ads = ADSelector(d, k, noise=1.0, init_scores=_scores(d))
    torch.manual_seed(0)
    out = ads(_x(6, d), masked=True)
    dropped = (out == 0).all(0)
    out.sum().backward()
    assert torch.all(torch.isfinite(ads.scores.grad))
    assert torch.all(ads.scores.grad[dropped] != 0)


def test_similarity_loss_reaches_dropped_scores():
    from smec_dist.method.losses import listwise_kl

    d, k = 10, 4
    ads = ADSelector(d, k, noise=0.0)
    g = torch.Generator().manual_seed(3)
    q, c = torch.randn(4, d, generator=g), torch.randn(6, d, generator=g)
    teacher = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T  # (4, 6) full-width similarities
    # the mask enters each similarity once (Masked), so a dropped dim's gradient is not m_i * 0
    m = ads.mask()
    view = Masked(torch.cat([q, c]), m).normalized()  # (10, d)
    student = (view[:4] * m) @ view[4:].T  # (4, 6)
    listwise_kl(student, teacher, 0.1).backward()
    dropped = torch.ones(d, dtype=torch.bool)
    dropped[ads.index()] = False
    assert ads.scores.grad[~dropped].abs().sum() > 0  # kept dims do get a gradient
    assert torch.any(ads.scores.grad[dropped] != 0)  # dropped dims learn whether to come back


# --------------------------------------------------------------------------- selection


def test_mask_without_noise_is_top_k_of_scores():
    d, k = 16, 6
    scores = _scores(d, seed=5)
    ads = ADSelector(d, k, noise=0.0, init_scores=scores)
    m = ads.mask()
    assert set(m.detach().nonzero().squeeze(1).tolist()) == set(torch.topk(scores, k).indices.tolist())
    assert torch.equal(ads.index(), torch.sort(torch.topk(scores, k).indices).values)
    # the forward value of the straight-through mask is the hard 0/1 mask
    torch.testing.assert_close(m.detach(), (m.detach() > 0.5).float())


def test_relaxed_topk_crosses_half_at_boundary_and_sums_to_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.arange(12, dtype=torch.float32)[torch.randperm(12, generator=g)]  # gaps of 1
    k, tau = 5, 0.1
    soft = relaxed_topk(logits, k, tau)
    assert soft.shape == logits.shape
    top = set(torch.topk(logits, k).indices.tolist())
    above = set((soft > 0.5).nonzero().squeeze(1).tolist())
    assert above == top
    assert torch.all((soft >= 0) & (soft <= 1))
    # threshold halfway between the k-th and (k+1)-th: symmetric around it, so the sum is k
    assert abs(float(soft.sum()) - k) < 1e-3


def test_relaxed_topk_boundary_on_random_logits():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(20, generator=g)
    for k in (1, 7, 19):
        soft = relaxed_topk(logits, k, 0.05)
        assert set((soft > 0.5).nonzero().squeeze(1).tolist()) == set(torch.topk(logits, k).indices.tolist())
        assert abs(float(soft.sum()) - k) < 1.0


def test_relaxed_topk_keep_all():
    logits = torch.randn(6)
    assert torch.equal(relaxed_topk(logits, 6, 0.1), torch.ones(6))


def test_relaxed_topk_is_differentiable():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0], requires_grad=True)
    relaxed_topk(logits, 2, 0.5).sum().backward()
    assert logits.grad is not None and torch.all(logits.grad > 0)


# --------------------------------------------------------------------------- freeze


def test_freeze_fixes_the_index_list():
    d, k = 12, 4
    ads = ADSelector(d, k, init_scores=_scores(d))
    x = _x(3, d)
    before = ads.index().clone()
    ads.freeze()
    out_before = ads(x, masked=False)
    with torch.no_grad():
        ads.scores.copy_(-ads.scores)  # would select the bottom-k dims if scores were read
    unfrozen = ADSelector(d, k, init_scores=ads.scores.detach())
    assert not set(unfrozen.index().tolist()) & set(before.tolist())  # sanity: scores changed the top-k
    assert torch.equal(ads.index(), before)
    assert torch.equal(ads(x, masked=False), out_before)
    ads.freeze()  # freezing again keeps the same list
    assert torch.equal(ads.index(), before)


def test_frozen_index_is_in_state_dict():
    ads = ADSelector(8, 3, init_scores=_scores(8))
    ads.freeze()
    state = ads.state_dict()
    assert torch.equal(state["frozen_index"], ads.index())


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("d,k", [(8, 0), (8, -1), (8, 9), (1, 2)])
def test_invalid_k_raises(d, k):
    with pytest.raises(ValueError):
        ADSelector(d, k)


def test_k_equal_d_is_allowed():
    ads = ADSelector(5, 5)
    x = _x(2, 5)
    assert torch.equal(ads(x, masked=False), x)
    assert ads(x, masked=True).shape == (2, 5)
