"""Projector and predictor MLPs of MoCo v3."""

from __future__ import annotations

from torch import nn

from moco3.batchnorm import GlobalBatchNorm1d


def build_mlp(
    num_layers: int,
    input_dim: int,
    mlp_dim: int,
    output_dim: int,
    last_bn: bool = True,
    use_bn: bool = True,
    global_bn: bool = False,
) -> nn.Sequential:
    """MLP (N, input_dim) -> (N, output_dim) with `num_layers` Linear layers.

    Official: every Linear is bias-free; hidden layers are Linear -> BN -> ReLU; the output
    Linear is followed by BatchNorm1d(affine=False) when last_bn (SimCLR's design, gamma
    removed). use_bn=False is the paper's "no BN in the heads" ablation: hidden Linears get
    a bias (nothing else re-centres them) and there is no BN anywhere. global_bn=True uses
    GlobalBatchNorm1d (batch statistics over all ranks, like the official SyncBatchNorm).
    Linears keep PyTorch's default init, as in the official code.
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
    bn = GlobalBatchNorm1d if global_bn else nn.BatchNorm1d
    layers: list[nn.Module] = []
    for i in range(num_layers):
        dim_in = input_dim if i == 0 else mlp_dim
        if i < num_layers - 1:
            # Divergence: the official code has no BN-free head; without BN after it, a hidden
            # Linear gets the bias that BN's beta would otherwise provide.
            layers.append(nn.Linear(dim_in, mlp_dim, bias=not use_bn))
            if use_bn:
                layers.append(bn(mlp_dim))
            layers.append(nn.ReLU(inplace=True))
        else:
            layers.append(nn.Linear(dim_in, output_dim, bias=False))
            if use_bn and last_bn:
                layers.append(bn(output_dim, affine=False))
    return nn.Sequential(*layers)
