"""ViT backbones: variants, patch/position embeddings, pooling, official init, sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moco3.vit import (
    VIT_ARCHS,
    ConvStem,
    VisionTransformer,
    build_vit,
    sincos_pos_embed_2d,
)

SMALL = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)


def tiny_vit(**kw) -> VisionTransformer:
    return VisionTransformer(**{**SMALL, "depth": 2, **kw})


@pytest.mark.parametrize("arch", sorted(VIT_ARCHS))
@pytest.mark.parametrize("patch_size", [4, 8])
def test_every_variant_builds_and_runs(arch: str, patch_size: int) -> None:
    torch.manual_seed(0)
    model = build_vit(arch, **{**SMALL, "patch_size": patch_size})
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, (32 // patch_size) ** 2 + 1, 32)
    out = model(x)
    assert out.shape == (2, 32) and model.num_features == 32
    assert torch.isfinite(out).all()
    assert torch.equal(out, tokens[:, 0])


def test_variant_table_matches_the_paper() -> None:
    assert VIT_ARCHS["vit_small"] == dict(embed_dim=384, depth=12, num_heads=12)
    assert VIT_ARCHS["vit_base"] == dict(embed_dim=768, depth=12, num_heads=12)
    assert VIT_ARCHS["vit_large"] == dict(embed_dim=1024, depth=24, num_heads=16)
    assert VIT_ARCHS["vit_huge"] == dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14)
    assert VIT_ARCHS["vit_conv_base"]["depth"] == 11
    with torch.device("meta"):
        conv = build_vit("vit_conv_small")
        plain = build_vit("vit_small")
        with pytest.raises(ValueError, match="has a conv stem"):
            build_vit("vit_conv_small", patch_embed="frozen")  # refused, never overridden
    assert isinstance(conv.patch_embed, ConvStem) and len(conv.blocks) == 11
    assert len(plain.blocks) == 12 and plain.blocks[0].attn.num_heads == 12


@pytest.mark.parametrize(
    ("arch", "millions", "patch"),
    [("vit_small", 22, 16), ("vit_base", 86, 16), ("vit_large", 304, 16), ("vit_huge", 632, 14)],
)
def test_parameter_counts_match_the_paper(arch: str, millions: float, patch: int) -> None:
    with torch.device("meta"):
        model = build_vit(arch, img_size=224)
    assert model.patch_embed.patch_size == (patch, patch)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - millions) / millions < 0.02, (arch, n)


def test_unknown_arch_and_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="vit_small"):
        build_vit("vit_gigantic")
    with pytest.raises(ValueError, match="unknown ViT override"):
        build_vit("vit_small", colour="red")
    with pytest.raises(ValueError, match="learned, frozen, conv_stem"):
        tiny_vit(patch_embed="random")
    with pytest.raises(ValueError, match="pos_embed"):
        tiny_vit(pos_embed="rope")


def test_sincos_matches_the_official_formula() -> None:
    dim, grid = 32, 4
    pe = sincos_pos_embed_2d(grid, grid, dim, cls_token=True)
    assert pe.shape == (1, grid * grid + 1, dim)
    assert torch.equal(pe[0, 0], torch.zeros(dim))
    # The official construction, written out literally.
    gw, gh = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = torch.einsum("m,d->md", gw.flatten(), omega)
    out_h = torch.einsum("m,d->md", gh.flatten(), omega)
    ref = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    assert torch.equal(pe[0, 1:], ref)
    # Non-square grid: token index r*W + c carries its row r then its column c.
    pe = sincos_pos_embed_2d(2, 3, dim, cls_token=False)[0]
    r, c = 1, 2
    expect = torch.cat([(r * omega).sin(), (r * omega).cos(), (c * omega).sin(),
                        (c * omega).cos()])
    assert torch.allclose(pe[r * 3 + c], expect)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(2, 2, 30, cls_token=False)


def adamw_steps(model: nn.Module, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(2, 3, 32, 32)).square().mean().backward()
        opt.step()


def test_frozen_patch_projection_and_sincos_never_change() -> None:
    torch.manual_seed(0)
    frozen, learned = tiny_vit(patch_embed="frozen"), tiny_vit(patch_embed="learned")
    frozen_w = frozen.patch_embed.proj.weight.detach().clone()
    learned_w = learned.patch_embed.proj.weight.detach().clone()
    pos = frozen.pos_embed.clone()
    param_ids = {id(p) for p in frozen.parameters()}
    assert id(frozen.pos_embed) not in param_ids and not frozen.pos_embed.requires_grad
    assert "pos_embed" in frozen.state_dict()
    adamw_steps(frozen)
    adamw_steps(learned)
    for p in frozen.patch_embed.parameters():
        assert not p.requires_grad and p.grad is None
    assert torch.equal(frozen.patch_embed.proj.weight, frozen_w)
    assert torch.equal(frozen.pos_embed, pos)
    assert learned.patch_embed.proj.weight.grad is not None
    assert not torch.equal(learned.patch_embed.proj.weight, learned_w)
    assert not torch.equal(frozen.blocks[0].attn.qkv.weight, learned.blocks[0].attn.qkv.weight)


def test_learned_and_no_position_embedding() -> None:
    torch.manual_seed(0)
    learned = tiny_vit(pos_embed="learned", img_size=64, patch_size=4)
    assert isinstance(learned.pos_embed, nn.Parameter) and learned.pos_embed.shape == (1, 257, 32)
    assert 0.015 < learned.pos_embed.std().item() < 0.025  # timm's trunc_normal_(std=.02)
    learned_small = tiny_vit(pos_embed="learned")
    before_small = learned_small.pos_embed.detach().clone()
    adamw_steps(learned_small, steps=1)
    assert not torch.equal(before_small, learned_small.pos_embed)
    none = tiny_vit(pos_embed="none")
    assert none.pos_embed is None and "pos_embed" not in none.state_dict()
    assert none(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_official_init() -> None:
    torch.manual_seed(0)
    d, p = 64, 8
    model = tiny_vit(embed_dim=d, num_heads=4, patch_size=p, patch_embed="learned")
    qkv = model.blocks[0].attn.qkv
    bound = math.sqrt(6.0 / (d + d))  # out/3 + in, Q K V as separate d x d matrices
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.95 * bound
    fc1 = model.blocks[0].mlp.fc1
    xavier = math.sqrt(6.0 / (d + 4 * d))
    assert fc1.weight.abs().max() <= xavier and fc1.weight.abs().max() > 0.95 * xavier
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    proj = model.patch_embed.proj.weight
    patch_bound = math.sqrt(6.0 / (3 * p * p + d))
    assert proj.abs().max() <= patch_bound and proj.abs().max() > 0.95 * patch_bound
    assert torch.equal(model.patch_embed.proj.bias, torch.zeros(d))
    assert 0 < model.cls_token.std().item() < 1e-5


def test_fused_attention_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_vit()
    assert all(blk.attn.fused_attn for blk in model.blocks)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == len(model.blocks)


def test_class_token_ablation_variants() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    mean_ln = tiny_vit(pooling="mean", final_norm=True)
    mean_no_ln = tiny_vit(pooling="mean", final_norm=False)
    for model in (mean_ln, mean_no_ln):
        assert model.cls_token is None
        assert "cls_token" not in dict(model.named_parameters())
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 16, 32)
        assert torch.allclose(model(x), tokens.mean(1))
    assert isinstance(mean_ln.norm, nn.LayerNorm) and mean_ln.norm.eps == 1e-6
    assert isinstance(mean_no_ln.norm, nn.Identity)
    # With a final LN every token is normalised: per-token mean 0 (LN bias starts at 0).
    assert torch.allclose(mean_ln.forward_features(x).mean(-1), torch.zeros(2, 16), atol=1e-5)


def test_conv_stem_layout() -> None:
    stem = ConvStem(img_size=224, patch_size=16, in_chans=3, embed_dim=384)
    convs = [m for m in stem.proj if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [48, 96, 192, 384, 384]
    assert [c.stride for c in convs] == [(2, 2)] * 4 + [(1, 1)]
    assert convs[-1].kernel_size == (1, 1) and convs[-1].bias is not None
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem.proj) == 4
    small = ConvStem(img_size=32, patch_size=4, in_chans=3, embed_dim=64)
    assert [m.out_channels for m in small.proj if isinstance(m, nn.Conv2d)] == [32, 64, 64]
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 64, 64)
    with pytest.raises(ValueError, match="power of 2"):
        ConvStem(img_size=36, patch_size=6, in_chans=3, embed_dim=64)


def test_grad_groups() -> None:
    model = tiny_vit(depth=3, patch_embed="frozen")
    groups = model.grad_groups()
    assert set(groups) == {"patch_embed", "first_block", "last_block"}
    ids = {k: [id(p) for p in v] for k, v in groups.items()}
    assert ids["patch_embed"] == [id(p) for p in model.patch_embed.parameters()]
    assert ids["first_block"] == [id(p) for p in model.blocks[0].parameters()]
    assert ids["last_block"] == [id(p) for p in model.blocks[2].parameters()]
    assert all(not p.requires_grad for p in groups["patch_embed"])


def test_drop_path_is_stochastic_depth_linear_in_depth() -> None:
    model = tiny_vit(depth=3, drop_path_rate=0.2)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
