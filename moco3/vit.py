"""Vision Transformer backbones of MoCo v3, assembled from timm's transformer blocks.

The official code subclasses timm's VisionTransformer; we own the module instead (timm's
VisionTransformer changes between releases) and take only its building blocks: `PatchEmbed`
and `Block` (pre-norm attention + MLP, fused scaled-dot-product attention). The switches are
the paper's ablations: patch projection learned | frozen (random) | conv stem, position
embedding sin-cos | learned | none, class token vs average pooling, final LayerNorm on/off.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from moco3.archs import PATCH_EMBEDS, POOLINGS, POS_EMBEDS, VIT_ARCHS, applies


def sincos_pos_embed_2d(
    grid_h: int, grid_w: int, dim: int, cls_token: bool, temperature: float = 10000.0
) -> Tensor:
    """Fixed 2D sin-cos position embedding of the official code, shape (1, N(+1), dim).

    pos_dim = dim/4, omega = 1/temperature^(arange(pos_dim)/pos_dim); channels
    [sin(a*omega), cos(a*omega), sin(b*omega), cos(b*omega)]; the cls position is all zeros.
    The official builds its grid with meshgrid(w, h, indexing="ij") and names the first half
    "w", but for the row-major token order of the patch embedding that first coordinate `a`
    is the token's patch *row* and `b` its column. We reproduce the official values bit for
    bit (square grids) and use the same row/column meaning on non-square grids.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    pos_dim = dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    rows = torch.arange(grid_h, dtype=torch.float32).repeat_interleave(grid_w)  # token -> row
    cols = torch.arange(grid_w, dtype=torch.float32).repeat(grid_h)  # token -> column
    out_a = torch.outer(rows, omega)
    out_b = torch.outer(cols, omega)
    pe = torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1)
    if cls_token:
        pe = torch.cat([torch.zeros(1, dim), pe], dim=0)
    return pe.unsqueeze(0)


class ConvStem(nn.Module):
    """Convolutional stem (Xiao et al. 2021) replacing the patch projection.

    Official (patch 16): four 3x3 stride-2 convs with BN+ReLU, channels D/8 -> D/4 -> D/2 -> D,
    then a 1x1 conv to D. For a patch size p = 2^n we use n stride-2 convs ending at D, i.e.
    channels D/2^(n-1) -> ... -> D (p=4: D/2 -> D; p=8: D/4 -> D/2 -> D), so small images
    (32 px, patch 4) keep a sensible token grid. p=16 is exactly the official stem.

    Input (B, C, H, W) -> tokens (B, (H/p)*(W/p), D).
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        n = int(math.log2(patch_size)) if patch_size > 1 else 0
        if patch_size < 2 or 2**n != patch_size:
            raise ValueError(f"conv stem needs a patch size that is a power of 2, got {patch_size}")
        if embed_dim % 2 ** (n - 1) != 0:
            raise ValueError(f"conv stem needs embed_dim divisible by {2 ** (n - 1)}")
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        # Divergence: the official stem asserts patch 16 (four convs); for p = 4 or 8 at small
        # image sizes we use log2(p) stride-2 convs so that the stem still ends at D.
        layers: list[nn.Module] = []
        in_dim, out_dim = in_chans, embed_dim // 2 ** (n - 1)
        for _ in range(n):
            layers += [
                nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_dim),
                nn.ReLU(inplace=True),
            ]
            in_dim, out_dim = out_dim, out_dim * 2
        layers.append(nn.Conv2d(in_dim, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, D)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT backbone of MoCo v3: tokens -> transformer blocks -> (final LN) -> pooled feature.

    patch_embed: "learned" | "frozen" (random init, requires_grad False: the paper's random
      patch projection) | "conv_stem".
    pos_embed: "sincos" (fixed buffer) | "learned" (trunc-normal .02) | "none".
    pooling: "cls" (class token) | "mean" (average of patch tokens; no class token at all).
    final_norm: LayerNorm after the last block (False: the paper's no-cls, no-LN variant).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_embed: str = "frozen",
        pos_embed: str = "sincos",
        pooling: str = "cls",
        final_norm: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, valid in (
            ("patch_embed", patch_embed, PATCH_EMBEDS),
            ("pos_embed", pos_embed, POS_EMBEDS),
            ("pooling", pooling, POOLINGS),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_features = self.embed_dim = embed_dim
        self.pooling = pooling
        self.patch_embed_kind = patch_embed

        self.patch_embed: nn.Module
        if patch_embed == "conv_stem":
            self.patch_embed = ConvStem(img_size, patch_size, in_chans, embed_dim)
        else:
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid_h, grid_w = self.patch_embed.grid_size
        num_prefix = 1 if pooling == "cls" else 0

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if num_prefix else None
        self.pos_embed: Tensor | None
        if pos_embed == "sincos":
            # A buffer, not a Parameter: never trained, never in the optimizer or the EMA.
            self.register_buffer(
                "pos_embed", sincos_pos_embed_2d(grid_h, grid_w, embed_dim, bool(num_prefix))
            )
        elif pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, grid_h * grid_w + num_prefix, embed_dim))
        else:
            self.pos_embed = None

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i],
                  norm_layer=norm_layer)
            for i in range(depth)
        )
        for blk in self.blocks:
            # timm turns fused attention off under TIMM_FUSED_ATTN=0 or export mode; we want
            # F.scaled_dot_product_attention (same math, less memory) regardless.
            blk.attn.fused_attn = True
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()

        self._init_weights(pos_embed)
        if patch_embed == "frozen":
            self.patch_embed.requires_grad_(False)

    def _init_weights(self, pos_embed: str) -> None:
        """The official MoCo v3 initialisation."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:
                    # Q, K and V are initialised as three separate (out/3 x in) matrices.
                    bound = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if isinstance(self.patch_embed, PatchEmbed):
            # xavier_uniform of the projection seen as a Linear(in=C*p*p, out=D); the conv
            # stem keeps PyTorch's default init, as in the official code.
            w = self.patch_embed.proj.weight
            bound = math.sqrt(6.0 / float(w.shape[1] * w.shape[2] * w.shape[3] + w.shape[0]))
            nn.init.uniform_(w, -bound, bound)
            nn.init.zeros_(self.patch_embed.proj.bias)
        if pos_embed == "learned":
            trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> tokens after the final norm, (B, N(+1), D); cls token first."""
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> pooled feature (B, D): the class token or the mean patch token."""
        x = self.forward_features(x)
        return x[:, 0] if self.pooling == "cls" else x.mean(dim=1)

    def set_fused_attention(self, enabled: bool) -> None:
        """F.scaled_dot_product_attention (True) or timm's explicit softmax(q k^T) v (False):
        the same math; which one is faster depends on the device and the precision
        (moco3.build.fused_attention_is_faster)."""
        for blk in self.blocks:
            blk.attn.fused_attn = enabled

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters watched by the gradient-spike monitor (frozen ones included)."""
        groups = {
            "patch_embed": list(self.patch_embed.parameters()),
            "first_block": list(self.blocks[0].parameters()) if len(self.blocks) else [],
            "last_block": list(self.blocks[-1].parameters()) if len(self.blocks) else [],
        }
        return {k: v for k, v in groups.items() if v}


VIT_OVERRIDES = frozenset({
    "img_size", "patch_size", "in_chans", "depth", "embed_dim", "num_heads", "mlp_ratio",
    "patch_embed", "pos_embed", "pooling", "final_norm", "drop_path_rate",
})


def build_vit(arch: str, **overrides: Any) -> VisionTransformer:
    """Build a named variant; overrides (None values ignored) replace its defaults.
    A conv-stem variant refuses another patch embedding (moco3.archs: one rule)."""
    if arch not in VIT_ARCHS:
        raise ValueError(f"unknown ViT arch {arch!r}; valid: {', '.join(VIT_ARCHS)}")
    unknown = set(overrides) - VIT_OVERRIDES
    if unknown:
        raise ValueError(
            f"unknown ViT override(s) {sorted(unknown)}; valid: {', '.join(sorted(VIT_OVERRIDES))}"
        )
    kwargs = {**VIT_ARCHS[arch], **{k: v for k, v in overrides.items() if v is not None}}
    if not applies(arch, "patch_embed") and kwargs["patch_embed"] != "conv_stem":
        raise ValueError(f"{arch} has a conv stem; patch_embed={kwargs['patch_embed']!r} "
                         "cannot apply to it")
    return VisionTransformer(**kwargs)
