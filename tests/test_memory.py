"""S-XBM queue: FIFO order across wrap-around, top-k against brute force, exclusion, state."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from smec_dist.method.memory import XBMQueue


def _batch(ids: list[int], dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings that encode their id (row i = [id, id + 0.5, -id, ...]) so order is checkable."""
    t = torch.tensor(ids, dtype=torch.float32).unsqueeze(1)
    emb = torch.cat([t, t + 0.5, -t, torch.ones_like(t)], 1)[:, :dim]
    return emb, torch.tensor(ids)


def _check(q: XBMQueue, expected: list[int]) -> None:
    emb, ids = q.contents()
    assert ids.tolist() == expected
    assert torch.equal(emb, _batch(expected, q.dim)[0])
    assert len(q) == len(expected)


# --------------------------------------------------------------------------- FIFO


def test_fifo_before_and_after_wrapping():
    q = XBMQueue(5, 3)
    assert len(q) == 0
    emb, ids = q.contents()
    assert emb.shape == (0, 3) and ids.shape == (0,)
    q.enqueue(*_batch([0, 1]))
    _check(q, [0, 1])
    q.enqueue(*_batch([2, 3, 4]))  # exactly full
    _check(q, [0, 1, 2, 3, 4])
    q.enqueue(*_batch([5, 6]))  # wraps: 0, 1 overwritten
    _check(q, [2, 3, 4, 5, 6])
    q.enqueue(*_batch([7, 8, 9, 10]))  # wraps again across the end of the buffer
    _check(q, [6, 7, 8, 9, 10])
    q.enqueue(*_batch([11]))
    _check(q, [7, 8, 9, 10, 11])


@pytest.mark.parametrize("prefix", [[], [0, 1], [0, 1, 2, 3, 4, 5, 6]])
def test_single_batch_larger_than_size_keeps_newest(prefix):
    q = XBMQueue(5, 3)
    if prefix:
        q.enqueue(*_batch(prefix))
    q.enqueue(*_batch(list(range(100, 108))))  # 8 > 5
    _check(q, [103, 104, 105, 106, 107])
    q.enqueue(*_batch([200, 201]))  # and the ring still works afterwards
    _check(q, [105, 106, 107, 200, 201])


def test_batch_of_exactly_size():
    q = XBMQueue(4, 3)
    q.enqueue(*_batch([0, 1, 2]))
    q.enqueue(*_batch([10, 11, 12, 13]))
    _check(q, [10, 11, 12, 13])


def test_fifo_matches_a_deque_model():
    size = 7
    q, model = XBMQueue(size, 3), deque(maxlen=size)
    g = np.random.default_rng(0)
    nxt = 0
    for n in g.integers(1, 12, size=40):  # batches smaller than, equal to and larger than size
        ids = list(range(nxt, nxt + int(n)))
        nxt += int(n)
        q.enqueue(*_batch(ids))
        model.extend(ids)
        _check(q, list(model))


def test_enqueue_detaches_and_casts():
    q = XBMQueue(4, 2, dtype=torch.float64)
    emb = torch.ones(2, 2, requires_grad=True)
    q.enqueue(emb * 2, torch.tensor([1, 2], dtype=torch.int32))
    e, ids = q.contents()
    assert e.dtype == torch.float64 and not e.requires_grad
    assert ids.dtype == torch.long and ids.tolist() == [1, 2]


@pytest.mark.parametrize("size", [0, -3])
def test_invalid_size_raises(size):
    with pytest.raises(ValueError):
        XBMQueue(size, 4)


# --------------------------------------------------------------------------- top-k


def _filled(size: int, dim: int, total: int, batches: list[int], seed: int = 0) -> XBMQueue:
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(total, dim, generator=g)
    q = XBMQueue(size, dim)
    start = 0
    for n in batches:
        q.enqueue(data[start:start + n], torch.arange(start, start + n))
        start += n
    assert start == total
    return q


def _brute(q: XBMQueue, query: torch.Tensor, k: int, exclude=None):
    """Top-k ids and values by numpy over contents() (the queue's own view, oldest first)."""
    emb, ids = q.contents()
    sims = query.numpy().astype(np.float64) @ emb.numpy().astype(np.float64).T  # (n, m)
    if exclude is not None:
        sims[ids.numpy()[None, :] == exclude.numpy()[:, None]] = -np.inf
    order = np.argsort(-sims, axis=1)[:, :k]
    return ids.numpy()[order], np.take_along_axis(sims, order, 1)


@pytest.mark.parametrize("batches", [[5, 4], [6, 9, 7, 5], [40]])  # partial, wrapped, oversized batch
def test_topk_matches_brute_force(batches):
    size, dim, k = 20, 8, 5
    q = _filled(size, dim, sum(batches), batches)
    query = torch.randn(4, dim, generator=torch.Generator().manual_seed(9))
    slots, vals = q.topk(query, k)
    k_eff = min(k, len(q))
    assert slots.shape == (4, k_eff) and vals.shape == (4, k_eff)
    want_ids, want_vals = _brute(q, query, k_eff)
    got_ids = q.ids[slots].numpy()
    for i in range(4):
        assert set(got_ids[i].tolist()) == set(want_ids[i].tolist())
    np.testing.assert_allclose(vals.numpy(), want_vals, rtol=1e-5, atol=1e-5)
    # the returned values are the similarities of the returned slots, best first
    torch.testing.assert_close(vals, torch.einsum("nd,nkd->nk", query, q.emb[slots]))
    assert torch.all(vals[:, :-1] >= vals[:, 1:])


def test_topk_clips_k_to_entries_held():
    q = _filled(10, 4, 3, [3])
    slots, vals = q.topk(torch.randn(2, 4), 50)
    assert slots.shape == (2, 3)
    assert sorted(q.ids[slots[0]].tolist()) == [0, 1, 2]


def test_topk_exclude_never_returns_the_excluded_id():
    size, dim = 12, 6
    q = _filled(size, dim, 30, [7, 11, 12])  # wrapped; ids 18..29 held
    emb, ids = q.contents()
    # each query is a held entry itself: without exclusion it would be its own top-1
    query = emb[[0, 5, 11]]
    own = ids[[0, 5, 11]]
    plain_slots, _ = q.topk(query, 3)
    assert torch.equal(q.ids[plain_slots[:, 0]], own)  # sanity
    for k in (1, 4, size - 1):
        slots, vals = q.topk(query, k, exclude=own)
        got = q.ids[slots]
        assert not torch.any(got == own.view(-1, 1))
        assert torch.all(torch.isfinite(vals))
        want_ids, want_vals = _brute(q, query, k, exclude=own)
        for i in range(3):
            assert set(got[i].tolist()) == set(want_ids[i].tolist())
        np.testing.assert_allclose(vals.numpy(), want_vals, rtol=1e-5, atol=1e-5)


def test_topk_exclude_masks_every_copy_of_a_duplicated_id():
    q = XBMQueue(6, 2)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    q.enqueue(e, torch.tensor([7, 8, 7]))  # the same item queued twice
    q.enqueue(e, torch.tensor([7, 8, 7]))
    slots, _ = q.topk(torch.tensor([[1.0, 0.0]]), 2, exclude=torch.tensor([7]))
    assert q.ids[slots].tolist() == [[8, 8]]


def test_topk_exclude_holds_when_k_reaches_the_entries_held():
    q = _filled(4, 3, 4, [4])
    query = q.emb[:2].clone()
    own = q.ids[:2].clone()
    slots, vals = q.topk(query, 4, exclude=own)
    assert not torch.any(q.ids[slots] == own.view(-1, 1))
    assert torch.all(torch.isfinite(vals))


# --------------------------------------------------------------------------- state


def test_state_dict_round_trip_restores_behaviour():
    size, dim = 9, 5
    a = _filled(size, dim, 23, [4, 8, 6, 5])  # wrapped, ptr in the middle
    state = a.state_dict()
    b = XBMQueue(size, dim)
    b.load_state_dict(state)
    assert len(b) == len(a)
    for x, y in zip(a.contents(), b.contents()):
        assert torch.equal(x, y)
    query = torch.randn(3, dim, generator=torch.Generator().manual_seed(4))
    excl = a.contents()[1][:3]
    for qa, qb in zip(a.topk(query, 4, exclude=excl), b.topk(query, 4, exclude=excl)):
        assert torch.equal(qa, qb)
    # identical behaviour afterwards too: the write pointer was restored
    more = torch.randn(4, dim, generator=torch.Generator().manual_seed(5))
    a.enqueue(more, torch.arange(100, 104))
    b.enqueue(more, torch.arange(100, 104))
    for x, y in zip(a.contents(), b.contents()):
        assert torch.equal(x, y)
    assert b.contents()[1][-4:].tolist() == [100, 101, 102, 103]


def test_state_dict_round_trip_partial_queue():
    a = _filled(10, 3, 4, [4])
    b = XBMQueue(10, 3)
    b.load_state_dict(a.state_dict())
    assert len(b) == 4
    assert torch.equal(b.contents()[1], a.contents()[1])


def test_state_dict_is_a_snapshot():
    a = _filled(5, 3, 5, [5])
    state = a.state_dict()
    a.enqueue(*_batch([50, 51]))
    b = XBMQueue(5, 3)
    b.load_state_dict(state)
    assert b.contents()[1].tolist() == [0, 1, 2, 3, 4]


def test_load_state_dict_rejects_wrong_shape():
    state = XBMQueue(5, 3).state_dict()
    with pytest.raises(ValueError):
        XBMQueue(6, 3).load_state_dict(state)
    with pytest.raises(ValueError):
        XBMQueue(5, 4).load_state_dict(state)
