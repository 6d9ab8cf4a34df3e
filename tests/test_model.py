"""MoCo model: heads, the momentum encoder, view batching, grad groups, the R50 variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moco3.batchnorm import GlobalBatchNorm1d
from moco3.heads import build_mlp
from moco3.model import MoCo, build_model
from moco3.resnet import build_resnet50

VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, dim=16, mlp_dim=24)


def small_moco(**kw) -> MoCo:
    torch.manual_seed(0)
    return build_model("vit_tiny", **{**VIT, **kw})


def views(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)


def test_official_mlp_layout() -> None:
    proj = build_mlp(3, 32, 64, 16)
    kinds = [type(m) for m in proj]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert all(m.bias is None for m in proj if isinstance(m, nn.Linear))
    assert [m.out_features for m in proj if isinstance(m, nn.Linear)] == [64, 64, 16]
    assert proj[-1].affine is False and proj[1].affine is True
    pred_r50 = build_mlp(2, 16, 64, 16, last_bn=False)
    assert [type(m) for m in pred_r50] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    no_bn = build_mlp(3, 32, 64, 16, use_bn=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in no_bn)
    assert [m.bias is not None for m in no_bn if isinstance(m, nn.Linear)] == [True, True, False]
    global_bn = build_mlp(2, 32, 64, 16, global_bn=True)
    assert sum(isinstance(m, GlobalBatchNorm1d) for m in global_bn) == 2


def test_vit_and_r50_heads_follow_the_official_builder() -> None:
    vit = small_moco()
    linears = [m for m in vit.base_encoder.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 24), (24, 24), (24, 16)]
    assert isinstance(vit.predictor[-1], nn.BatchNorm1d)
    assert vit.batch_views
    with torch.device("meta"):
        r50 = build_model("resnet50", dim=256, mlp_dim=4096)
    linears = [m for m in r50.base_encoder.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 4096), (4096, 256)]
    assert isinstance(r50.predictor[-1], nn.Linear)  # no last BN in the R50 predictor
    assert not r50.batch_views
    with pytest.raises(ValueError, match="resnet50"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="resnet50 takes no ViT options"):
        build_model("resnet50", patch_embed="frozen")  # refused, never silently ignored


def test_resnet50_backbone() -> None:
    torch.manual_seed(0)
    net = build_resnet50()
    assert net.num_features == 2048 and isinstance(net.fc, nn.Identity)
    assert torch.equal(net.layer1[0].bn3.weight, torch.zeros(256))  # zero_init_residual
    groups = net.grad_groups()
    assert [id(p) for p in groups["patch_embed"]] == [id(net.conv1.weight), id(net.bn1.weight),
                                                      id(net.bn1.bias)]
    assert [id(p) for p in groups["last_block"]] == [id(p) for p in net.layer4[2].parameters()]
    assert [id(p) for p in groups["first_block"]] == [id(p) for p in net.layer1[0].parameters()]
    model = MoCo(net, dim=8, mlp_dim=16, proj_layers=2, pred_last_bn=False)
    q1, q2, z1, z2 = model(*views(2))
    assert q1.shape == z2.shape == (2, 8)


def test_momentum_encoder_is_a_frozen_copy() -> None:
    model = small_moco()
    base = dict(model.base_encoder.named_parameters())
    mom = dict(model.momentum_encoder.named_parameters())
    assert base.keys() == mom.keys()
    for name, p in mom.items():
        assert not p.requires_grad
        assert torch.equal(p, base[name]) and p.data_ptr() != base[name].data_ptr()
    x1, x2 = views()
    q1, q2, z1, z2 = model(x1, x2)
    k1, k2 = model.forward_keys(x1, x2)
    assert not k1.requires_grad and not k2.requires_grad
    torch.testing.assert_close(k1, z1.detach())
    torch.testing.assert_close(k2, z2.detach())
    (q1.sum() + q2.sum()).backward()
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    assert model.base_encoder.backbone.blocks[0].attn.qkv.weight.grad is not None


def test_update_momentum_encoder() -> None:
    model = small_moco()
    with torch.no_grad():
        for p in model.base_encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    model.update_momentum_encoder(1.0)
    for p, b in zip(model.momentum_encoder.parameters(), before, strict=True):
        assert torch.equal(p, b)
    model.update_momentum_encoder(0.5)
    for p, b, q in zip(model.momentum_encoder.parameters(), before,
                       model.base_encoder.parameters(), strict=True):
        torch.testing.assert_close(p, 0.5 * b + 0.5 * q)
    model.update_momentum_encoder(0.0)
    for p, q in zip(model.momentum_encoder.parameters(), model.base_encoder.parameters(),
                    strict=True):
        assert torch.equal(p, q)


def test_forward_is_per_view_heads_over_a_batched_backbone() -> None:
    model = small_moco()
    x1, x2 = views()
    q1, q2, z1, z2 = model(x1, x2)
    backbone, proj = model.base_encoder.backbone, model.base_encoder.projector
    f1, f2 = backbone(x1), backbone(x2)
    f = backbone(torch.cat([x1, x2]))
    torch.testing.assert_close(f, torch.cat([f1, f2]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z1, proj(f1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z2, proj(f2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q1, model.predictor(proj(f1)), rtol=1e-5, atol=1e-5)
    # Heads normalise each view with its own batch statistics, not the 2B batch's.
    assert not torch.allclose(proj(f)[: len(x1)], z1, atol=1e-3)
    assert q1.shape == q2.shape == (4, 16)
    torch.testing.assert_close(model.features(x1), f1)


def test_conv_stem_backbone_sees_each_view_alone() -> None:
    model = build_model("vit_conv_small", **{**VIT, "patch_size": 4})
    assert not model.batch_views
    x1, x2 = views()
    _, _, z1, _ = model(x1, x2)
    enc = model.base_encoder
    torch.testing.assert_close(z1, enc.projector(enc.backbone(x1)), rtol=1e-5, atol=1e-5)


def test_ablation_switches() -> None:
    no_pred = small_moco(predictor=False)
    assert isinstance(no_pred.predictor, nn.Identity)
    q1, _, z1, _ = no_pred(*views())
    assert torch.equal(q1, z1)
    no_bn = small_moco(head_bn=False)
    heads = [*no_bn.base_encoder.projector.modules(), *no_bn.predictor.modules()]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in heads)
    e2e = small_moco(momentum_encoder=False)
    assert e2e.momentum_encoder is None
    e2e.update_momentum_encoder(0.99)
    with pytest.raises(RuntimeError, match="end-to-end"):
        e2e.forward_keys(*views())
    gbn = small_moco(global_bn=True)
    assert any(isinstance(m, GlobalBatchNorm1d) for m in gbn.predictor.modules())


def test_grad_groups() -> None:
    model = small_moco()
    groups = model.grad_groups()
    assert set(groups) == {"patch_embed", "first_block", "last_block", "heads"}
    backbone = model.base_encoder.backbone
    last = backbone.blocks[-1].parameters()
    assert [id(p) for p in groups["last_block"]] == [id(p) for p in last]
    heads = [*model.base_encoder.projector.parameters(), *model.predictor.parameters()]
    assert [id(p) for p in groups["heads"]] == [id(p) for p in heads]
    momentum_ids = {id(p) for p in model.momentum_encoder.parameters()}
    assert not momentum_ids & {id(p) for v in groups.values() for p in v}
