"""ema_update: k <- m k + (1 - m) q, exact at m = 0 and m = 1."""

import pytest
import torch
from torch import nn

from moco3.momentum import ema_update


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    momentum = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    for p in momentum.parameters():
        p.requires_grad_(False)
        p.data.normal_()
    return base, momentum


def test_m0_copies_the_base_encoder():
    base, mom = _pair()
    ema_update(list(mom.parameters()), list(base.parameters()), 0.0)
    for pk, pq in zip(mom.parameters(), base.parameters(), strict=True):
        assert torch.equal(pk, pq)


def test_m1_keeps_the_momentum_encoder():
    base, mom = _pair()
    before = [p.clone() for p in mom.parameters()]
    ema_update(list(mom.parameters()), list(base.parameters()), 1.0)
    for pk, old in zip(mom.parameters(), before, strict=True):
        assert torch.equal(pk, old)


def test_m099_matches_the_formula():
    base, mom = _pair()
    before = [p.clone() for p in mom.parameters()]
    ema_update(list(mom.parameters()), list(base.parameters()), 0.99)
    for pk, old, pq in zip(mom.parameters(), before, base.parameters(), strict=True):
        torch.testing.assert_close(pk, 0.99 * old + 0.01 * pq.detach(), rtol=0, atol=1e-6)
        assert not torch.equal(pk, old)


def test_base_params_that_require_grad_are_untouched_and_graph_free():
    base, mom = _pair()
    base_before = [p.clone() for p in base.parameters()]
    ema_update(list(mom.parameters()), list(base.parameters()), 0.5)
    for pq, old in zip(base.parameters(), base_before, strict=True):
        assert torch.equal(pq, old)
    assert all(p.grad_fn is None for p in mom.parameters())


def test_bad_inputs_raise():
    base, mom = _pair()
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ema_update(list(mom.parameters()), list(base.parameters()), 1.5)
    with pytest.raises(ValueError, match="parameters"):
        ema_update(list(mom.parameters())[:-1], list(base.parameters()), 0.9)
