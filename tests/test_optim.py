"""LARS and LAMB against hand computations; AdamW groups, apply_wd, frozen parameters."""

import io
import math

import pytest
import torch
from torch import nn

from moco3.optim import LAMB, LARS, build_optimizer, param_groups


def _tensor(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_lars_two_steps_by_hand():
    lr, wd, mom, tc = 0.5, 0.5, 0.9, 0.001
    w = _tensor([[3.0, 0.0], [0.0, 4.0]])
    b = _tensor([1.0, 2.0])
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=mom, trust_coefficient=tc)

    # Step 1. Matrix: d = g + wd*w = [[2.5, 0], [0, 2]], ||w|| = 5, ||d|| = sqrt(10.25),
    # d *= 0.001 * 5 / sqrt(10.25); mu = d; w -= lr * mu. Bias (1-D): d = g, no decay.
    w.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    b.grad = torch.tensor([0.5, -1.0], dtype=torch.float64)
    opt.step()
    t1 = tc * 5.0 / math.sqrt(10.25)
    mu_w = [[2.5 * t1, 0.0], [0.0, 2.0 * t1]]
    w1 = [[3.0 - lr * mu_w[0][0], 0.0], [0.0, 4.0 - lr * mu_w[1][1]]]
    mu_b = [0.5, -1.0]
    b1 = [1.0 - lr * 0.5, 2.0 + lr * 1.0]
    torch.testing.assert_close(w.detach(), torch.tensor(w1, dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor(b1, dtype=torch.float64))

    # Step 2: momentum accumulates the trust-scaled update, mu = 0.9 mu + d.
    w.grad = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    b.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()
    d = [[wd * w1[0][0], 1.0], [0.0, wd * w1[1][1]]]
    norm_w = math.sqrt(w1[0][0] ** 2 + w1[1][1] ** 2)
    norm_d = math.sqrt(sum(x * x for row in d for x in row))
    t2 = tc * norm_w / norm_d
    mu2 = [[mom * mu_w[i][j] + t2 * d[i][j] for j in range(2)] for i in range(2)]
    w2 = [[w1[i][j] - lr * mu2[i][j] for j in range(2)] for i in range(2)]
    b2 = [b1[i] - lr * (mom * mu_b[i] + 1.0) for i in range(2)]
    torch.testing.assert_close(w.detach(), torch.tensor(w2, dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor(b2, dtype=torch.float64))


def test_lars_zero_weight_uses_trust_one():
    w = nn.Parameter(torch.zeros(2, 3))
    opt = LARS([w], lr=0.1, weight_decay=0.1)
    w.grad = torch.ones(2, 3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 3), -0.1))


def test_lamb_step_by_hand():
    lr, wd, eps, (b1, b2) = 0.01, 1e-3, 1e-6, (0.9, 0.999)
    w0, g = [3.0, -4.0, 0.0, 1.0], [0.1, 0.2, -0.3, 0.0]
    w = _tensor(w0)
    opt = LAMB([w], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    w.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    # t = 1: m_hat = g, v_hat = g^2 (bias-corrected), r = g / (|g| + eps),
    # u = r + wd*w, trust = ||w|| / ||u||, w <- w - lr * trust * u.
    u = [gi / (abs(gi) + eps) + wd * wi for gi, wi in zip(g, w0, strict=True)]
    trust = math.sqrt(sum(x * x for x in w0)) / math.sqrt(sum(x * x for x in u))
    expected = [wi - lr * trust * ui for wi, ui in zip(w0, u, strict=True)]
    torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64))

    # t = 2 with the same gradient: m = (1 - b1^2) g / (1 - b1^2) = g again, same for v.
    w1 = expected
    w.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    u = [gi / (abs(gi) + eps) + wd * wi for gi, wi in zip(g, w1, strict=True)]
    trust = math.sqrt(sum(x * x for x in w1)) / math.sqrt(sum(x * x for x in u))
    expected = [wi - lr * trust * ui for wi, ui in zip(w1, u, strict=True)]
    torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=torch.float64))


def test_lamb_clamps_trust_when_a_norm_is_zero():
    w = nn.Parameter(torch.zeros(3))
    opt = LAMB([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.tensor([1.0, -2.0, 0.0])
    opt.step()  # ||w|| = 0 -> trust 1 -> w = -lr * g / (|g| + eps)
    torch.testing.assert_close(w.detach(), -0.1 * torch.tensor([1.0, -2.0, 0.0]) /
                               (torch.tensor([1.0, 2.0, 0.0]) + 1e-6))
    v = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = LAMB([v], lr=0.1)
    v.grad = torch.zeros(2)
    opt.step()  # ||u|| = 0 -> trust 1, no NaN, no move
    assert torch.equal(v.detach(), torch.tensor([1.0, 1.0]))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2, bias=False))
    model[0].weight.requires_grad_(False)  # a frozen tensor, like the frozen patch embed
    return model


def test_adamw_official_groups_decay_everything_trainable():
    model = _model()
    opt = build_optimizer("adamw", model.named_parameters(), lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["apply_wd"] is True and group["weight_decay"] == 0.1
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [id(p) for p in group["params"]] == [id(p) for p in trainable]
    assert all(id(p) != id(model[0].weight) for p in group["params"])


def test_adamw_exclude_norm_bias_groups():
    model = _model()
    opt = build_optimizer("adamw", model.named_parameters(), lr=1e-3, weight_decay=0.05,
                          exclude_norm_bias=True)
    decay, no_decay = opt.param_groups
    assert decay["apply_wd"] is True and decay["weight_decay"] == 0.05
    assert no_decay["apply_wd"] is False and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model[2].weight)]
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias)}


@pytest.mark.parametrize("name", ["adamw", "lars", "lamb"])
def test_frozen_and_gradless_params_do_not_move(name):
    model = _model()
    opt = build_optimizer(name, model.named_parameters(), lr=0.1, weight_decay=0.1)
    frozen_before = model[0].weight.detach().clone()
    gradless_before = model[1].weight.detach().clone()
    model(torch.randn(5, 4)).sum().backward()
    model[1].weight.grad = None  # e.g. unused in this step
    before = model[2].weight.detach().clone()
    opt.step()
    assert model[0].weight.grad is None
    assert torch.equal(model[0].weight, frozen_before)
    assert torch.equal(model[1].weight, gradless_before)
    assert not torch.equal(model[2].weight, before)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_state_round_trips_through_weights_only_load(name):
    model_a, model_b = _model(), _model()
    opt_a = build_optimizer(name, model_a.named_parameters(), lr=0.1, weight_decay=0.1)
    opt_b = build_optimizer(name, model_b.named_parameters(), lr=0.1, weight_decay=0.1)
    x = torch.randn(5, 4)
    model_a(x).square().sum().backward()
    opt_a.step()
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_bad_names_and_no_trainable_params_raise():
    model = _model()
    with pytest.raises(ValueError, match="adamw, lars, lamb"):
        build_optimizer("sgd", model.named_parameters(), lr=0.1, weight_decay=0.0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model.named_parameters(), 0.1)


# -- LAMB against timm.optim.Lamb ---------------------------------------------------------------
def timm_lamb(groups: list[dict], lr: float, betas: tuple[float, float], weight_decay: float):
    """timm's Lamb with the arguments that make it moco3's LAMB: no global gradient clipping
    (timm clips to norm 1 by default), the trust ratio on every tensor (timm skips it where
    weight decay is 0 unless always_adapt), eps 1e-6, bias correction, coupled decay."""
    from timm.optim import Lamb

    return Lamb(groups, lr=lr, betas=betas, eps=1e-6, weight_decay=weight_decay,
                bias_correction=True, grad_averaging=True, max_grad_norm=None,
                trust_clip=False, always_adapt=True, decoupled_decay=False, foreach=False)


def _twin_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    ours = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    theirs = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("exclude_norm_bias", [False, True])
def test_lamb_equals_timm_lamb_step_for_step(exclude_norm_bias):
    """20 steps with the loop's schedules (lr and weight decay set per step in each group,
    a no-decay group when exclude_norm_bias): the weights agree at every step."""
    ours, theirs = _twin_models()
    opts = [build_optimizer("lamb", m.named_parameters(), lr=0.0, weight_decay=1e-3,
                            exclude_norm_bias=exclude_norm_bias) for m in (ours,)]
    groups = param_groups(theirs.named_parameters(), 1e-3, exclude_norm_bias)
    opts.append(timm_lamb(groups, lr=0.0, betas=(0.9, 0.999), weight_decay=1e-3))
    gen = torch.Generator().manual_seed(1)
    for step in range(20):
        x = torch.randn(8, 6, dtype=torch.float64, generator=gen)
        for model, opt in zip((ours, theirs), opts, strict=True):
            for group in opt.param_groups:
                group["lr"] = 0.01 * (step + 1) / 20
                group["weight_decay"] = (1e-3 * (1 + step / 10)) if group["apply_wd"] else 0.0
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_lamb_differs_from_timm_lamb_for_a_tensor_that_skips_steps():
    """The one difference: moco3 counts Adam's bias-correction steps per tensor, timm per
    group, so a tensor without a gradient on some steps (unused that step) is corrected
    differently afterwards. Every trainable tensor of a MoCo step gets a gradient, so the
    two agree on moco3's runs; moco3 keeps its own (its checkpoints hold per-tensor steps)."""
    ours, theirs = _twin_models()
    opts = [LAMB(list(ours.parameters()), lr=0.01, weight_decay=1e-3),
            timm_lamb(list(theirs.parameters()), lr=0.01, betas=(0.9, 0.999),
                      weight_decay=1e-3)]
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for step in range(3):  # the bias's first update is the third step
        for model, opt in zip((ours, theirs), opts, strict=True):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            if step < 2:
                model[2].bias.grad = None  # unused on the first two steps
            opt.step()
    assert torch.allclose(ours[0].weight, theirs[0].weight, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(ours[2].bias, theirs[2].bias, rtol=1e-6, atol=1e-9)
