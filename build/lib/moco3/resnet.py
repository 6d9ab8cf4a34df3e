"""ResNet-50 base encoder of MoCo v3 (the paper's R50 rows)."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet


class ResNet50Backbone(ResNet):
    """torchvision's resnet50(zero_init_residual=True) with the classifier removed.

    Subclassing (rather than wrapping) keeps torchvision's state_dict keys.
    (B, 3, H, W) -> pooled feature (B, 2048).
    """

    def __init__(self) -> None:
        # Exactly torchvision.models.resnet50(zero_init_residual=True): last BN of every
        # residual branch starts at zero, as in the official MoCo v3.
        super().__init__(Bottleneck, [3, 4, 6, 3], zero_init_residual=True)
        self.num_features: int = self.fc.in_features
        self.fc = nn.Identity()

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters watched by the gradient-spike monitor: the stem (the counterpart of
        the ViT's patch projection), the first and the last residual block."""
        return {
            "patch_embed": [*self.conv1.parameters(), *self.bn1.parameters()],
            "first_block": list(self.layer1[0].parameters()),
            "last_block": list(self.layer4[-1].parameters()),
        }


def build_resnet50() -> ResNet50Backbone:
    """The R50 backbone: (B, 3, H, W) -> (B, 2048)."""
    return ResNet50Backbone()
