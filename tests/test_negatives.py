"""The four negatives mechanisms in one process: loss, state updates, checkpointing."""

import pytest
import torch
import torch.nn.functional as F

from moco3.loss import infonce, infonce_with_negatives
from moco3.negatives import (
    EndToEndNegatives,
    InBatchNegatives,
    MemoryBankNegatives,
    QueueNegatives,
    build_negatives,
    needs_momentum_encoder,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_build_and_flags():
    cases = {
        "in_batch": (InBatchNegatives, True),
        "end_to_end": (EndToEndNegatives, False),
        "queue": (QueueNegatives, True),
        "memory_bank": (MemoryBankNegatives, False),
    }
    for name, (cls, needs_mom) in cases.items():
        neg = build_negatives(name, dim=4, tau=0.2, queue_size=8, num_samples=10)
        assert isinstance(neg, cls)
        assert neg.needs_momentum_encoder is needs_mom
        assert needs_momentum_encoder(name) is needs_mom  # what the model builder asks
    with pytest.raises(ValueError, match="in_batch, queue, memory_bank, end_to_end"):
        build_negatives("bank", dim=4, tau=0.2)
    with pytest.raises(ValueError, match="num_samples"):
        build_negatives("memory_bank", dim=4, tau=0.2)
    with pytest.raises(ValueError, match="queue_size"):
        build_negatives("queue", dim=4, tau=0.2, queue_size=0)


def test_in_batch_is_infonce_and_blocks_key_gradient():
    q = _randn(6, 4, seed=1).requires_grad_(True)
    k = _randn(6, 4, seed=2).requires_grad_(True)
    neg = build_negatives("in_batch", dim=4, tau=0.2)
    loss = neg.loss(q, k, torch.arange(6))
    torch.testing.assert_close(loss, infonce(q, k, 0.2))
    loss.backward()
    assert q.grad is not None and k.grad is None


def test_end_to_end_passes_gradient_to_keys():
    q = _randn(6, 4, seed=1).requires_grad_(True)
    k = _randn(6, 4, seed=2).requires_grad_(True)
    neg = build_negatives("end_to_end", dim=4, tau=0.2)
    neg.loss(q, k, torch.arange(6)).backward()
    k_ref = k.detach().clone().requires_grad_(True)
    infonce(q.detach(), k_ref, 0.2).backward()
    torch.testing.assert_close(k.grad, k_ref.grad)


def _keys(n: int, start: int, dim: int = 3) -> torch.Tensor:
    """Distinguishable unit keys: row j is e_0 rotated by angle (start + j)."""
    angle = torch.arange(start, start + n, dtype=torch.float32)
    return torch.stack([angle.cos(), angle.sin(), torch.zeros(n)], dim=1)[:, :dim]


def test_queue_fifo_and_wraparound_with_k_not_multiple_of_batch():
    neg = build_negatives("queue", dim=3, tau=0.2, queue_size=5)
    initial = neg.queue.clone()
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(5))
    a, b, c = _keys(2, 0), _keys(2, 10), _keys(2, 20)
    neg.update([a], torch.arange(2))
    assert int(neg.queue_ptr) == 2
    torch.testing.assert_close(neg.queue[:2], a)
    assert torch.equal(neg.queue[2:], initial[2:])
    neg.update([b], torch.arange(2))
    neg.update([c], torch.arange(2))  # slots 4, then wraps to 0
    assert int(neg.queue_ptr) == 1
    torch.testing.assert_close(neg.queue, torch.stack([c[1], a[1], b[0], b[1], c[0]]))


def test_queue_enqueues_views_in_list_order_and_keeps_newest_when_overfull():
    neg = build_negatives("queue", dim=3, tau=0.2, queue_size=5)
    k1, k2 = _keys(2, 0), _keys(2, 30)
    neg.update([k1, k2], torch.arange(2))
    torch.testing.assert_close(neg.queue[:4], torch.cat([k1, k2]))
    assert int(neg.queue_ptr) == 4
    big = _keys(7, 50)  # 7 keys into K = 5: the oldest 2 are overwritten at once
    neg.update([big], torch.arange(7))
    assert int(neg.queue_ptr) == (4 + 7) % 5
    # The newest five keys, big[2:], land at slots 1, 2, 3, 4, 0 (ending at ptr 1).
    torch.testing.assert_close(neg.queue, torch.stack([big[6], big[2], big[3], big[4], big[5]]))


def test_queue_stores_unit_keys_in_its_dtype():
    neg = build_negatives("queue", dim=3, tau=0.2, queue_size=4)
    neg.update([5.0 * _keys(2, 0).to(torch.bfloat16)], torch.arange(2))
    assert neg.queue.dtype == torch.float32
    torch.testing.assert_close(neg.queue.norm(dim=1), torch.ones(4), atol=1e-2, rtol=0)


def test_queue_loss_uses_queue_before_update_and_backward_survives_update():
    neg = build_negatives("queue", dim=4, tau=0.2, queue_size=6)
    q = _randn(3, 4, seed=3).requires_grad_(True)
    k = _randn(3, 4, seed=4)
    expected = infonce_with_negatives(q, k, neg.queue.clone(), 0.2)
    loss = neg.loss(q, k, torch.arange(3))
    torch.testing.assert_close(loss, expected)
    grad_ref = torch.autograd.grad(expected, q)[0]
    neg.update([k], torch.arange(3))  # enqueued after the logits, before backward
    loss.backward()
    torch.testing.assert_close(q.grad, grad_ref)


def test_queue_state_dict_round_trip():
    neg = build_negatives("queue", dim=3, tau=0.2, queue_size=5)
    neg.update([_keys(3, 0)], torch.arange(3))
    state = neg.state_dict()
    assert set(state) == {"queue", "queue_ptr"}
    other = build_negatives("queue", dim=3, tau=0.2, queue_size=5)
    other.load_state_dict(state)
    assert torch.equal(other.queue, neg.queue) and int(other.queue_ptr) == 3


def test_memory_bank_updates_exactly_the_sampled_rows():
    torch.manual_seed(0)
    neg = build_negatives("memory_bank", dim=3, tau=0.2, queue_size=4, num_samples=10,
                          bank_momentum=0.5)
    assert set(neg.state_dict()) == {"bank"}
    before = neg.bank.clone()
    torch.testing.assert_close(before.norm(dim=1), torch.ones(10))
    index = torch.tensor([7, 2, 5])
    k1, k2 = 3.0 * _randn(3, 3, seed=5), _randn(3, 3, seed=6)
    neg.update([k1, k2], index)
    others = torch.ones(10, dtype=torch.bool)
    others[index] = False
    assert torch.equal(neg.bank[others], before[others])
    # Changed rows: one momentum step towards the normalised mean of the two views' keys.
    k_mean = (F.normalize(k1, dim=1) + F.normalize(k2, dim=1)) / 2
    expected = F.normalize(0.5 * before[index] + 0.5 * k_mean, dim=1)
    torch.testing.assert_close(neg.bank[index], expected)
    torch.testing.assert_close(neg.bank.norm(dim=1), torch.ones(10))
    assert not torch.allclose(neg.bank[index], before[index])


def test_memory_bank_loss_positive_is_the_bank_row_and_negatives_are_sampled():
    torch.manual_seed(0)
    neg = build_negatives("memory_bank", dim=4, tau=0.1, queue_size=6, num_samples=20)
    q = _randn(3, 4, seed=7).requires_grad_(True)
    index = torch.tensor([4, 0, 19])
    torch.manual_seed(123)
    loss = neg.loss(q, torch.zeros(3, 4), index)
    torch.manual_seed(123)
    sampled = neg.sample(index)
    expected = infonce_with_negatives(q, neg.bank[index], neg.bank[sampled], 0.1)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert q.grad is not None and neg.bank.grad is None


def test_memory_bank_distinct_draws_k_different_rows_and_never_a_positive():
    # K = 8 of 12 rows with a batch of 4: every row outside the batch is drawn, none of the
    # batch's rows; over many steps no draw repeats a row or meets a positive.
    neg = build_negatives("memory_bank", dim=3, tau=0.2, queue_size=8, num_samples=12)
    assert neg.sampling == "distinct"
    torch.manual_seed(0)
    for step in range(50):
        index = torch.randperm(12)[:4]
        sampled = neg.sample(index)
        assert sampled.shape == (8,)
        assert len(set(sampled.tolist())) == 8, f"step {step}: repeated rows {sampled}"
        assert not set(sampled.tolist()) & set(index.tolist())
    assert set(neg.sample(torch.arange(4)).tolist()) == set(range(4, 12))


def test_memory_bank_distinct_refuses_more_negatives_than_rows_outside_the_batch():
    neg = build_negatives("memory_bank", dim=3, tau=0.2, queue_size=9, num_samples=12)
    with pytest.raises(ValueError, match="K=9 distinct negatives from the 8 rows"):
        neg.sample(torch.arange(4))


def test_memory_bank_with_replacement_is_wu_et_al():
    # The original: uniform draws with replacement, which repeat rows and hit positives
    # when K is near the number of rows.
    neg = build_negatives("memory_bank", dim=3, tau=0.2, queue_size=64, num_samples=12,
                          bank_sampling="with_replacement")
    torch.manual_seed(1)
    index = torch.arange(4)
    sampled = neg.sample(index)
    torch.manual_seed(1)
    assert torch.equal(sampled, torch.randint(12, (64,)))
    assert len(set(sampled.tolist())) < 64 and set(sampled.tolist()) & set(index.tolist())
    with pytest.raises(ValueError, match="valid: distinct, with_replacement"):
        build_negatives("memory_bank", dim=3, tau=0.2, queue_size=4, num_samples=12,
                        bank_sampling="sometimes")


def test_a_bank_too_small_for_k_distinct_rows_is_refused_at_compose_time():
    from moco3.config import ConfigError, to_run_config

    cfg = {"moco": {"negatives": "memory_bank", "queue_size": 2000},
           "data": {"name": "textures", "num_train": 2000}, "train": {"batch_size": 128}}
    with pytest.raises(ConfigError, match="moco.queue_size=2000 distinct memory-bank "
                                          "negatives do not fit in the 1872 rows"):
        to_run_config(cfg)
    cfg["moco"]["bank_sampling"] = "with_replacement"  # Wu et al.'s draws need no room
    assert to_run_config(cfg).moco.queue_size == 2000
