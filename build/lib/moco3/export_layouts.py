"""The three export targets: their state-dict layouts, model arguments and arch names.

timm   the base encoder's backbone alone, keyed as timm's VisionTransformer names it (for
       ResNet-50: torchvision's resnet50 without `fc`), plus the exact constructor arguments.
deit   {'model': backbone} as DeiT's main.py (--finetune, or --resume) reads it: a timm
       VisionTransformer with a class token and no classifier weights.
moco   {'state_dict': module.base_encoder.*, module.momentum_encoder.*, module.predictor.*} as
       the official main_moco.py saves it and main_lincls.py / convert_to_deit.py read it.

Facts about the official code these layouts rely on (facebookresearch/moco-v3): the encoders
are timm 0.4.9 VisionTransformers (class token, learned-shape pos_embed Parameter holding the
sin-cos values, final LayerNorm eps 1e-6, qkv bias) or torchvision ResNets, whose `head` / `fc`
IS the projector MLP; the MLPs are nn.Sequential of Linear(bias=False) -> BN -> ReLU ... ->
Linear -> BN(affine=False), exactly moco3.heads.build_mlp with use_bn=True, so the Sequential
indices carry over unchanged. The whole model is saved from DistributedDataParallel, hence
`module.`. main_lincls.py keeps `module.base_encoder.*` except `head` / `fc`, strips the prefix
and asserts that the missing keys are exactly the classifier's.

Each `*_refusal` returns the one sentence that says why a model cannot be expressed in a
format, or None. `load_*` build the target model (on the meta device, weights assigned from
the file's tensors, so no init cost at any size) the way its consumer does, for the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import Tensor, nn
from torchvision.models import resnet50

from moco3.vit import VIT_ARCHS, ConvStem, VisionTransformer

BACKBONE = "base_encoder.backbone."
FORMATS = ("timm", "deit", "moco")


@dataclass(frozen=True)
class ViTSpec:
    """What was built: the ViT's shape and switches, read off the module itself."""

    arch: str
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_embed: str  # learned | frozen | conv_stem
    pos_embed: str  # sincos | learned | none
    pooling: str  # cls | mean
    final_norm: bool

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def dims(self) -> str:
        return (f"img {self.img_size}, patch {self.patch_size}, embed_dim {self.embed_dim}, "
                f"depth {self.depth}, {self.num_heads} heads, mlp_ratio {self.mlp_ratio:g}")


@dataclass(frozen=True)
class ResNetSpec:
    arch: str
    img_size: int  # only what the check feeds it: global average pooling takes any size


Spec = ViTSpec | ResNetSpec


def spec_of(arch: str, backbone: nn.Module, img_size: int) -> Spec:
    """The spec of a built moco3 backbone (ours, not the config's, so it is what was trained)."""
    if not isinstance(backbone, VisionTransformer):
        return ResNetSpec(arch, img_size)
    pe = backbone.patch_embed
    block = backbone.blocks[0]
    if backbone.pos_embed is None:
        pos = "none"
    else:
        # sin-cos is a buffer (never trained), learned a Parameter: moco3.vit's convention.
        pos = "learned" if isinstance(backbone.pos_embed, nn.Parameter) else "sincos"
    first_conv = pe.proj if isinstance(pe.proj, nn.Conv2d) else pe.proj[0]
    return ViTSpec(
        arch=arch, img_size=pe.grid_size[0] * pe.patch_size[0], patch_size=pe.patch_size[0],
        in_chans=first_conv.in_channels, embed_dim=backbone.embed_dim, depth=len(backbone.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / backbone.embed_dim,
        patch_embed=backbone.patch_embed_kind, pos_embed=pos, pooling=backbone.pooling,
        final_norm=not isinstance(backbone.norm, nn.Identity),
    )


def backbone_state(model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The base encoder's backbone, keys as the backbone module names them: for the ViT these
    are timm's VisionTransformer names, for ResNet-50 torchvision's (fc is an Identity: none)."""
    return {k[len(BACKBONE):]: v for k, v in model_state.items() if k.startswith(BACKBONE)}


def _with_zero_pos_embed(state: dict[str, Tensor], spec: ViTSpec, prefix: str = "") -> None:
    """Give a ViT without position embedding the all-zero one of a class-token ViT."""
    # Divergence: the official ViT (and DeiT's) always has a pos_embed of shape (1, 1+N, D)
    # and DeiT's --finetune reads it unconditionally; adding zeros is exactly "no position
    # embedding", so features are unchanged, but a fine-tuning run will train it from zero.
    if f"{prefix}pos_embed" not in state:
        state[f"{prefix}pos_embed"] = torch.zeros(1, spec.num_patches + 1, spec.embed_dim)


# -- timm -------------------------------------------------------------------------------------
# create_model names whose builder is the plain VisionTransformer; every shape argument is
# passed explicitly, so the name only picks the class (and timm's preprocessing metadata,
# which the sidecar overrides: these names default to mean/std 0.5, MoCo v3 used ImageNet's).
TIMM_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224", "vit_large": "vit_large_patch16_224",
    "vit_huge": "vit_huge_patch14_224", "resnet50": "resnet50",
}


def timm_refusal(spec: Spec) -> str | None:
    if isinstance(spec, ViTSpec) and spec.patch_embed == "conv_stem":
        return ("timm's stock VisionTransformer has no convolutional stem "
                "(model.patch_embed=conv_stem), so it cannot load this backbone; --format moco "
                "writes it for the official vits.py (patch 16)")
    return None


def timm_kwargs(spec: Spec) -> dict[str, Any]:
    """Keyword arguments of timm.create_model(TIMM_NAMES[arch], **kw), which for a ViT are
    also those of timm.models.vision_transformer.VisionTransformer(**kw)."""
    if isinstance(spec, ResNetSpec):
        # timm's resnet50 keys and forward are torchvision's; num_classes=0 makes fc Identity.
        return {"num_classes": 0}
    cls = spec.pooling == "cls"
    kwargs: dict[str, Any] = {
        "img_size": spec.img_size, "patch_size": spec.patch_size, "in_chans": spec.in_chans,
        "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads,
        "mlp_ratio": spec.mlp_ratio, "qkv_bias": True,
        "class_token": cls, "global_pool": "token" if cls else "avg",
        # timm's default for global_pool='avg' is fc_norm: LayerNorm AFTER averaging, with the
        # per-token norm dropped. moco3 normalises every token, then averages: that is
        # fc_norm=False with the final norm kept (timm's `norm`), and the averages agree.
        "fc_norm": False,
        # sin-cos and learned both load as timm's learned-shape Parameter (the values are the
        # file's); 'none' has no pos_embed at all, as in moco3.
        "pos_embed": "none" if spec.pos_embed == "none" else "learn",
        # The class token's position is row 0 of pos_embed (concatenate, then add), as in
        # moco3 and the official code; no_embed_class=True would add before concatenating.
        "no_embed_class": False,
        "num_classes": 0,
    }
    if not spec.final_norm:
        # Only when needed: final_norm is a recent VisionTransformer argument (True = default).
        kwargs["final_norm"] = False
    return kwargs


def load_timm(state: dict[str, Tensor], spec: Spec) -> nn.Module:
    """The timm-format file in its documented target, loaded strictly: timm's
    VisionTransformer(**timm_kwargs) for a ViT, torchvision's resnet50 with fc=Identity."""
    with torch.device("meta"):
        if isinstance(spec, ResNetSpec):
            model: nn.Module = resnet50()
            model.fc = nn.Identity()
        else:
            model = TimmViT(**timm_kwargs(spec))
    model.load_state_dict(state, strict=True, assign=True)
    return model


# -- the official ViT / DeiT ViT ----------------------------------------------------------------
def _official_vit_refusal(spec: ViTSpec, who: str) -> str | None:
    """What the timm 0.4.9-style VisionTransformer of the official code and of DeiT cannot be."""
    if spec.pooling == "mean":
        return (f"{who} pools a class token and this model has none (model.pooling=mean); "
                "--format timm expresses it (global_pool='avg')")
    if not spec.final_norm:
        return (f"{who} always applies a final LayerNorm and this model has none "
                "(model.final_norm=false); --format timm expresses it (final_norm=False)")
    return None


def _classifier_vit(spec: ViTSpec, num_classes: int = 1000) -> TimmViT:
    """A timm VisionTransformer configured as the official vits.py / DeiT's models.py build
    one (class token, token pooling, pos_embed Parameter over 1+N tokens, LN eps 1e-6, qkv
    bias, a Linear classifier), on the meta device. A conv stem gets moco3's ConvStem, whose
    patch-16 layout is the official ConvStem's (the refusal keeps other patch sizes out)."""
    extra: dict[str, Any] = {}
    if spec.patch_embed == "conv_stem":
        def stem(img_size: int, patch_size: int, in_chans: int, embed_dim: int,
                 **_: Any) -> ConvStem:
            return ConvStem(img_size, patch_size, in_chans, embed_dim)

        extra["embed_layer"] = stem
    with torch.device("meta"):
        return TimmViT(img_size=spec.img_size, patch_size=spec.patch_size,
                       in_chans=spec.in_chans, embed_dim=spec.embed_dim, depth=spec.depth,
                       num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, qkv_bias=True,
                       num_classes=num_classes, **extra)


def _load_missing_classifier(model: nn.Module, state: dict[str, Tensor], name: str) -> None:
    """strict=False load, then the official assertion: exactly the classifier is missing. We
    also demand no unexpected key, since a strict=False load would silently drop one."""
    msg = model.load_state_dict(state, strict=False, assign=True)
    expected = {f"{name}.weight", f"{name}.bias"}
    if set(msg.missing_keys) != expected or msg.unexpected_keys:
        raise RuntimeError(f"missing {sorted(msg.missing_keys)} (expected {sorted(expected)}), "
                           f"unexpected {sorted(msg.unexpected_keys)}")
    setattr(model, name, nn.Identity())  # the features: everything before the classifier


# -- deit -------------------------------------------------------------------------------------
# DeiT's models.py (all patch 16, depth 12, mlp_ratio 4); its create_model also takes img_size
# from --input-size. DeiT-S has 6 heads where MoCo v3's ViT-S has 12: same shapes, so the
# weights load, silently, into a model that computes something else.
DEIT_ARCHS = {
    (192, 3): "deit_tiny_patch16_224",
    (384, 6): "deit_small_patch16_224",
    (768, 12): "deit_base_patch16_224",
}


def deit_refusal(spec: Spec) -> str | None:
    if isinstance(spec, ResNetSpec):
        return ("DeiT fine-tunes Vision Transformers only; export ResNet-50 with --format moco "
                "(the official main_lincls.py) or --format timm")
    if spec.patch_embed == "conv_stem":
        return ("DeiT's VisionTransformer has a linear patch projection, not this model's "
                "convolutional stem (model.patch_embed=conv_stem), and its strict=False load "
                "would silently keep a random one; --format moco writes it for vits.py")
    return _official_vit_refusal(spec, "DeiT's VisionTransformer")


def deit_state(model_state: dict[str, Tensor], spec: ViTSpec) -> dict[str, Tensor]:
    """The backbone under DeiT's (= timm's) names; a zero pos_embed if the model has none."""
    state = backbone_state(model_state)
    _with_zero_pos_embed(state, spec)
    return state


def deit_arch(spec: ViTSpec) -> tuple[str | None, list[str]]:
    """The DeiT --model to pass (or None) and what the user must change or know."""
    notes: list[str] = []
    stock = spec.patch_size == 16 and spec.depth == 12 and spec.mlp_ratio == 4
    name = None
    if stock and spec.embed_dim == 384 and spec.num_heads == 12:
        name = DEIT_ARCHS[(384, 6)]
        notes.append(f"{name} has num_heads=6 and this ViT-S has 12: set num_heads=12 in "
                     "DeiT's models.py first, or the weights load (same shapes) into a model "
                     "that computes different features")
    elif stock:
        name = DEIT_ARCHS.get((spec.embed_dim, spec.num_heads))
    if name is None:
        notes.append(f"no DeiT arch has this shape ({spec.dims()}); register one in DeiT's "
                     "models.py: VisionTransformer(**vit_kwargs in the JSON, "
                     "norm_layer=partial(nn.LayerNorm, eps=1e-6))")
    return name, notes


def deit_vit_kwargs(spec: ViTSpec) -> dict[str, Any]:
    """The VisionTransformer arguments of the DeiT model that loads the file (besides
    norm_layer=partial(nn.LayerNorm, eps=1e-6) and num_classes)."""
    return {"img_size": spec.img_size, "patch_size": spec.patch_size, "embed_dim": spec.embed_dim,
            "depth": spec.depth, "num_heads": spec.num_heads, "mlp_ratio": spec.mlp_ratio,
            "qkv_bias": True}


def load_deit(state: dict[str, Tensor], spec: ViTSpec) -> nn.Module:
    """What DeiT's main.py --finetune does with {'model': state}: create the arch (class
    token, 1000-way head), load strict=False; the head is the only key left out."""
    model = _classifier_vit(spec)
    _load_missing_classifier(model, state, "head")
    return model


# -- moco (the official pre-training checkpoint) ------------------------------------------------
OFFICIAL_ARCHS = ("vit_small", "vit_base", "vit_conv_small", "vit_conv_base", "resnet50")


def moco_refusal(spec: Spec, head_bn: bool, predictor: bool) -> str | None:
    if not head_bn:
        return ("the official projector and predictor always have BatchNorm and this run has "
                "none (model.head_bn=false), so their keys cannot be named as the official "
                "builder names them; --format timm or deit writes the backbone")
    if not predictor:
        return ("the official MoCo v3 always has a predictor and this run has none "
                "(model.predictor=false); --format timm or deit writes the backbone")
    if isinstance(spec, ResNetSpec):
        return None
    if spec.patch_embed == "conv_stem" and spec.patch_size != 16:
        return (f"the official ConvStem is four stride-2 convolutions (patch 16) and this one "
                f"has patch {spec.patch_size}, so vits.py cannot build it")
    return _official_vit_refusal(spec, "the official ViT (timm's VisionTransformer)")


def moco_state(model_state: dict[str, Tensor], spec: Spec) -> tuple[dict[str, Tensor], bool]:
    """The official MoCo state_dict, and whether the momentum encoder had to be copied.

    moco3 `<enc>.backbone.X` -> `module.<enc>.X`; `<enc>.projector.N` -> `module.<enc>.head.N`
    (ViT) or `module.<enc>.fc.N` (ResNet: the official replaces torchvision's fc by the MLP);
    `predictor.N` -> `module.predictor.N`. Sequential indices are the official ones.
    """
    head = "fc" if isinstance(spec, ResNetSpec) else "head"
    out: dict[str, Tensor] = {}
    for key, value in model_state.items():
        enc, _, rest = key.partition(".")
        if enc == "predictor":
            out[f"module.{key}"] = value
            continue
        part, _, name = rest.partition(".")
        out[f"module.{enc}.{name if part == 'backbone' else f'{head}.{name}'}"] = value
    copied = not any(k.startswith("module.momentum_encoder.") for k in out)
    if copied:
        # Divergence: the end-to-end and memory-bank mechanisms keep no momentum encoder, but
        # the official checkpoint always has one. Theirs is the base encoder itself (end-to-
        # end is MoCo with m = 0, whose momentum encoder equals the base encoder at every
        # step), so we store the base encoder under that name too; main_lincls.py and
        # convert_to_deit.py never read it.
        base = "module.base_encoder."
        out.update({f"module.momentum_encoder.{k[len(base):]}": v
                    for k, v in list(out.items()) if k.startswith(base)})
    if isinstance(spec, ViTSpec):
        for enc in ("base_encoder", "momentum_encoder"):
            _with_zero_pos_embed(out, spec, prefix=f"module.{enc}.")
    return out, copied


def official_arch_notes(spec: Spec) -> list[str]:
    """What main_lincls.py -a ARCH would need to load this checkpoint: its vits.py builds
    each arch at 224 px with fixed dimensions."""
    if isinstance(spec, ResNetSpec):
        return []
    if spec.arch not in OFFICIAL_ARCHS:
        return [f"the official vits.py has no {spec.arch}: add a constructor with this shape "
                f"({spec.dims()}) before main_lincls.py -a {spec.arch} can load it"]
    stock = {"patch_size": 16, **VIT_ARCHS[spec.arch]}
    stock.pop("patch_embed", None)
    mine = {"patch_size": spec.patch_size, "embed_dim": spec.embed_dim, "depth": spec.depth,
            "num_heads": spec.num_heads}
    if mine != stock or spec.img_size != 224 or spec.mlp_ratio != 4:
        return [f"the official vits.py builds {spec.arch} at img 224 with {stock}; this one is "
                f"{spec.dims()}: give vits.{spec.arch} this shape before main_lincls.py or "
                "DeiT can load it"]
    return []


def load_lincls(state_dict: dict[str, Tensor], spec: Spec) -> nn.Module:
    """What main_lincls.py does with checkpoint['state_dict']: keep module.base_encoder.*
    except the classifier (head / fc), strip the prefix, load strict=False into vits.ARCH()
    or torchvision's resnet50(), the missing keys being exactly the classifier's."""
    name = "fc" if isinstance(spec, ResNetSpec) else "head"
    prefix = "module.base_encoder."
    kept = {k[len(prefix):]: v for k, v in state_dict.items()
            if k.startswith(prefix) and not k.startswith(f"{prefix}{name}")}
    if isinstance(spec, ResNetSpec):
        with torch.device("meta"):
            model: nn.Module = resnet50()
    else:
        model = _classifier_vit(spec)
    _load_missing_classifier(model, kept, name)
    return model
