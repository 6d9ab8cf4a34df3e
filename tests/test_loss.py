"""InfoNCE against hand computations, the 2*tau factor, rank offsets and symmetry."""

import math

import pytest
import torch
import torch.nn.functional as F

from moco3.loss import infonce, infonce_with_negatives


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_infonce_matches_hand_computation_with_offset():
    q = [[3.0, 4.0], [1.0, 0.0]]
    k = [[5.0, 5.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]]
    tau, offset = 0.5, 1
    # By hand: unit vectors, logits l_ij = q_i.k_j / tau, positive of row i is column
    # i + offset, loss_i = -log(exp(l_pos) / sum_j exp(l_ij)), mean over rows, times 2*tau.
    qn, kn = [_unit(v) for v in q], [_unit(v) for v in k]
    total = 0.0
    for i, qi in enumerate(qn):
        logits = [_dot(qi, kj) / tau for kj in kn]
        total += -(logits[i + offset] - math.log(sum(math.exp(x) for x in logits)))
    expected = 2 * tau * total / len(q)

    got = infonce(torch.tensor(q), torch.tensor(k), tau, offset=offset)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unscaled = infonce(torch.tensor(q), torch.tensor(k), tau, offset=offset,
                       scale_by_2tau=False)
    assert unscaled.item() == pytest.approx(expected / (2 * tau), rel=1e-6)


def test_infonce_with_negatives_matches_hand_computation():
    q = [[1.0, 2.0, 2.0], [0.0, -3.0, 4.0]]
    k_pos = [[2.0, 2.0, 1.0], [0.0, -1.0, 0.0]]
    negs = [[1.0, 0.0, 0.0], [0.0, 0.0, 7.0], [1.0, 1.0, 1.0]]
    tau = 0.2
    total = 0.0
    for qi, ki in zip(q, k_pos, strict=True):
        qu = _unit(qi)
        l_pos = _dot(qu, _unit(ki)) / tau
        l_negs = [_dot(qu, _unit(n)) / tau for n in negs]
        total += -(l_pos - math.log(math.exp(l_pos) + sum(math.exp(x) for x in l_negs)))
    expected = total / len(q)
    got = infonce_with_negatives(torch.tensor(q), torch.tensor(k_pos), torch.tensor(negs),
                                 tau, scale_by_2tau=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    scaled = infonce_with_negatives(torch.tensor(q), torch.tensor(k_pos), torch.tensor(negs),
                                    tau, scale_by_2tau=True)
    assert scaled.item() == pytest.approx(2 * tau * expected, rel=1e-6)


@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_scale_by_2tau(tau):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    plain = infonce(q, k, tau, scale_by_2tau=False)
    torch.testing.assert_close(infonce(q, k, tau), 2 * tau * plain)
    neg = torch.randn(5, 8, generator=g)
    torch.testing.assert_close(infonce_with_negatives(q, k, neg, tau),
                               2 * tau * infonce_with_negatives(q, k, neg, tau, False))


def test_rank_offset_labels_split_the_global_loss():
    g = torch.Generator().manual_seed(1)
    world, n, d = 3, 4, 5
    q, k = torch.randn(world * n, d, generator=g), torch.randn(world * n, d, generator=g)
    full = infonce(q, k, 0.2)
    per_rank = [infonce(q[r * n:(r + 1) * n], k, 0.2, offset=r * n) for r in range(world)]
    torch.testing.assert_close(torch.stack(per_rank).mean(), full)
    # The labels really are arange + offset: an explicit cross-entropy agrees, and the
    # wrong offset gives a different loss.
    r = 2
    logits = F.normalize(q[r * n:(r + 1) * n], dim=1) @ F.normalize(k, dim=1).T / 0.2
    manual = F.cross_entropy(logits, torch.arange(n) + r * n) * 0.4
    torch.testing.assert_close(per_rank[r], manual)
    assert not torch.allclose(infonce(q[r * n:(r + 1) * n], k, 0.2, offset=0), per_rank[r])
    with pytest.raises(ValueError, match="offset"):
        infonce(q[:n], k, 0.2, offset=world * n)


def test_symmetric_loss_is_symmetric_and_permutation_invariant():
    g = torch.Generator().manual_seed(2)
    q1, q2, k1, k2 = (torch.randn(8, 16, generator=g) for _ in range(4))

    def sym(qa, qb, ka, kb):
        return infonce(qa, kb, 0.2) + infonce(qb, ka, 0.2)

    assert torch.equal(sym(q1, q2, k1, k2), sym(q2, q1, k2, k1))
    # Reordering the batch (same permutation for queries and keys) keeps each positive on
    # its diagonal, so the loss is unchanged; a mismatched permutation breaks the pairs.
    perm = torch.randperm(8, generator=g)
    torch.testing.assert_close(sym(q1[perm], q2[perm], k1[perm], k2[perm]), sym(q1, q2, k1, k2))
    assert not torch.allclose(infonce(q1, k2[perm], 0.2), infonce(q1, k2, 0.2))


def test_infonce_with_negatives_is_infonce_with_the_positive_first():
    g = torch.Generator().manual_seed(3)
    q, k_pos, negs = torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g), \
        torch.randn(6, 4, generator=g)
    torch.testing.assert_close(infonce_with_negatives(q, k_pos, negs, 0.3),
                               infonce(q, torch.cat([k_pos, negs]), 0.3))


def test_logits_stay_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    ref = infonce(q, k, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = infonce(q, k, 0.2)
        got_neg = infonce_with_negatives(q, k, k, 0.2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_neg, infonce_with_negatives(q, k, k, 0.2),
                               rtol=1e-6, atol=1e-6)


def test_gradient_matches_autograd_of_explicit_formula():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(5, 3, generator=g, requires_grad=True)
    k = torch.randn(5, 3, generator=g)
    infonce(q, k, 0.5).backward()
    q2 = q.detach().clone().requires_grad_(True)
    logits = F.normalize(q2, dim=1) @ F.normalize(k, dim=1).T / 0.5
    explicit = -(logits.diag() - logits.exp().sum(1).log()).mean() * 1.0
    explicit.backward()
    torch.testing.assert_close(q.grad, q2.grad)
