"""The collectives on one process are identities (their 2-rank behaviour is tested in
test_e2e_distributed.py and test_distributed_encode.py)."""

import torch

from smec_dist import dist


def test_single_process_collectives_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    x = torch.randn(3, 4, requires_grad=True)
    y = dist.gather(x)
    assert y is x  # keeps the graph: gradients flow as without the gather
    z = dist.gather_detached(x)
    assert torch.equal(z, x) and not z.requires_grad
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 2.0])
    dist.average_grads([p])
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0]))
    assert dist.mean_over_ranks(1.5) == 1.5
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.all_gather_object(7) == [7]
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert dist.process_group_kwargs() == []
