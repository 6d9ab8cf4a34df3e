"""The MoCo v3 model: base encoder (backbone + projector), predictor, momentum encoder.

The momentum update is an explicit call (`update_momentum_encoder`), never part of forward,
so the training step decides its order (official: after the queries, before the keys).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from moco3.archs import ARCHS, VIT_ARCHS
from moco3.heads import build_mlp
from moco3.momentum import ema_update
from moco3.resnet import build_resnet50
from moco3.vit import build_vit


class Encoder(nn.Module):
    """backbone -> projector: (B, 3, H, W) -> (B, dim)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in module.modules())


class MoCo(nn.Module):
    """MoCo v3: q = predictor(projector(backbone(x))) from the base encoder, k from a
    momentum encoder that starts as an exact copy and follows it by EMA.

    Heads as official: projector `proj_layers` deep (last BN), predictor `pred_layers` deep
    (last BN iff pred_last_bn). head_bn=False removes BN from both heads; predictor=False
    makes the predictor an Identity (q = z); momentum_encoder=False (the end-to-end
    mechanism) keeps no momentum encoder. global_bn=True: head BN statistics over all ranks.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int = 256,
        mlp_dim: int = 4096,
        proj_layers: int = 3,
        pred_layers: int = 2,
        pred_last_bn: bool = True,
        head_bn: bool = True,
        predictor: bool = True,
        momentum_encoder: bool = True,
        global_bn: bool = False,
    ) -> None:
        super().__init__()
        num_features = int(backbone.num_features)
        projector = build_mlp(proj_layers, num_features, mlp_dim, dim, last_bn=True,
                              use_bn=head_bn, global_bn=global_bn)
        self.base_encoder = Encoder(backbone, projector)
        self.predictor: nn.Module = (
            build_mlp(pred_layers, dim, mlp_dim, dim, last_bn=pred_last_bn, use_bn=head_bn,
                      global_bn=global_bn)
            if predictor else nn.Identity()
        )
        self.momentum_encoder: Encoder | None = None
        if momentum_encoder:
            self.momentum_encoder = copy.deepcopy(self.base_encoder)
            self.momentum_encoder.requires_grad_(False)
        # LayerNorm is per sample, so a BN-free backbone gives identical features for the
        # two views in one batch of 2B (one larger matmul per layer: faster). A backbone
        # with BN (ResNet-50, the conv stem) must see each view as its own batch, as official.
        self.batch_views = not _has_batchnorm(backbone)

    def _encode(self, encoder: Encoder, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Both views through `encoder`; the projector always sees each view separately
        (per-view BN statistics, as official). (B,3,H,W) x2 -> (B, dim) x2."""
        if self.batch_views:
            f = encoder.backbone(torch.cat([x1, x2]))
            f1, f2 = f[: x1.shape[0]], f[x1.shape[0] :]
        else:
            f1, f2 = encoder.backbone(x1), encoder.backbone(x2)
        return encoder.projector(f1), encoder.projector(f2)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Two views (B, 3, H, W) -> (q1, q2, z1, z2), each (B, dim); z is the projector
        output (the end-to-end mechanism's keys), q = predictor(z)."""
        z1, z2 = self._encode(self.base_encoder, x1, x2)
        return self.predictor(z1), self.predictor(z2), z1, z2

    @torch.no_grad()
    def forward_keys(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (k1, k2), each (B, dim), from the momentum encoder, without grad."""
        if self.momentum_encoder is None:
            raise RuntimeError(
                "this MoCo has no momentum encoder (momentum_encoder=False, end-to-end): "
                "use z1, z2 from forward() as keys"
            )
        return self._encode(self.momentum_encoder, x1, x2)

    @torch.no_grad()
    def update_momentum_encoder(self, m: float) -> None:
        """EMA of every parameter: k <- m*k + (1-m)*q (m=0 copies, m=1 keeps). Buffers (BN
        running statistics) are the momentum encoder's own, as official."""
        if self.momentum_encoder is None:
            return
        ema_update(list(self.momentum_encoder.parameters()),
                   list(self.base_encoder.parameters()), m)

    def features(self, x: Tensor) -> Tensor:
        """Backbone pooled features (B, num_features) for kNN and the linear probe."""
        return self.base_encoder.backbone(x)

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """The backbone's monitor groups plus "heads" (projector + predictor)."""
        groups = dict(self.base_encoder.backbone.grad_groups())
        groups["heads"] = [*self.base_encoder.projector.parameters(),
                           *self.predictor.parameters()]
        return groups


def build_model(
    arch: str,
    *,
    dim: int = 256,
    mlp_dim: int = 4096,
    head_bn: bool = True,
    predictor: bool = True,
    momentum_encoder: bool = True,
    global_bn: bool = False,
    **vit_overrides: Any,
) -> MoCo:
    """MoCo with the official heads for the arch: ViT projector 3 layers, predictor with
    last BN; ResNet-50 projector 2 layers, predictor without last BN. ViT overrides: see
    `build_vit`; a ResNet-50 takes none."""
    if arch == "resnet50":
        if vit_overrides:
            raise ValueError(f"resnet50 takes no ViT options, got {sorted(vit_overrides)}")
        backbone: nn.Module = build_resnet50()
        proj_layers, pred_last_bn = 2, False
    elif arch in VIT_ARCHS:
        backbone = build_vit(arch, **vit_overrides)
        proj_layers, pred_last_bn = 3, True
    else:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    return MoCo(backbone, dim=dim, mlp_dim=mlp_dim, proj_layers=proj_layers, pred_layers=2,
                pred_last_bn=pred_last_bn, head_bn=head_bn, predictor=predictor,
                momentum_encoder=momentum_encoder, global_bn=global_bn)
