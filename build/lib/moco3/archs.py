"""The architectures a run can train, and which model switches apply to which of them.

Torch-free, so that the launcher can refuse a switch that cannot apply before anything is
written or any job loads torch; `moco3.vit` and `moco3.model` build from these tables.
"""

from __future__ import annotations

from typing import Any

# The MoCo v3 ViT variants. The official ViT-S uses 12 heads (timm's vit_small has 6; same
# parameter count). The conv stem replaces roughly one block's compute, hence 11 blocks.
VIT_ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=12),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
    "vit_conv_small": dict(embed_dim=384, depth=11, num_heads=12, patch_embed="conv_stem"),
    "vit_conv_base": dict(embed_dim=768, depth=11, num_heads=12, patch_embed="conv_stem"),
}
CONV_STEM_ARCHS = tuple(a for a, spec in VIT_ARCHS.items() if spec.get("patch_embed"))
ARCHS = (*VIT_ARCHS, "resnet50")

PATCH_EMBEDS = ("learned", "frozen", "conv_stem")
POS_EMBEDS = ("sincos", "learned", "none")
POOLINGS = ("cls", "mean")

# The ViT-only switches of model config (with the schema's defaults): a ResNet-50 run
# refuses any other value rather than ignoring it.
VIT_SWITCHES: dict[str, Any] = {
    "patch_embed": "frozen", "pos_embed": "sincos", "pooling": "cls", "final_norm": True,
    "drop_path_rate": 0.0,
}
# The ViT's geometry. Scales and datasets set these for the ViTs they size (patch 4 at
# 32 px, 4 blocks at the tiny scale); a ResNet-50 has none of them. A study that varies one
# of them on a ResNet-50 is refused (experiments/grid.py).
VIT_GEOMETRY = ("patch_size", "depth", "embed_dim", "num_heads")


def inapplicable_switches(model: Any) -> list[str]:
    """`model.<key>=<value>` for each switch of a model config that cannot apply to its
    arch (empty when all apply)."""
    arch = model["arch"]
    if arch == "resnet50":
        return [f"model.{k}={model[k]!r}" for k, default in VIT_SWITCHES.items()
                if model[k] != default]
    if arch in CONV_STEM_ARCHS and model["patch_embed"] != "conv_stem":
        return [f"model.patch_embed={model['patch_embed']!r}"]
    return []


def applies(arch: str, key: str) -> bool:
    """Whether model config key `key` (without "model.") means anything for `arch`."""
    if arch == "resnet50":
        return key not in VIT_SWITCHES and key not in VIT_GEOMETRY
    return not (arch in CONV_STEM_ARCHS and key == "patch_embed")
