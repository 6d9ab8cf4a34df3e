"""What a run costs, from analytic FLOPs and the paper's compute figure (pure functions).

Anchor: MoCo v3 ViT-B/16, 100 epochs of ImageNet-1k at 224 px ~ 24 h on 128 GPUs
(docs/paper-reference.md, "Compute"). A run is scaled from it by its per-image training FLOPs
(backbone + heads, counted layer by layer), its epochs and its number of training images;
the linear probe adds its epochs of one backbone forward per image. CPU runs are also given
in core-hours from CPU_FLOPS_PER_CORE, an effective training throughput measured once (the
README's speed section has the figures).
"""

from __future__ import annotations

import math
from typing import Any

from moco3.config import GENERATED_DATASETS

REF_GPU_HOURS = 24.0 * 128  # ViT-B/16, 100 epochs, ImageNet-1k
REF_EPOCHS = 100
REF_IMAGES = 1_281_167
# Effective CPU training throughput in FLOP/s per core (one thread per run), measured on the
# mini scale's ViT (patch 4, width 48, batch 128; 0.15 GFLOP per training image): bf16 on an
# AMD EPYC with AVX-512 BF16, 0.49 s a step = 40e9; fp32 there ~29e9, and ~16e9 on an AVX2
# EPYC (the committed fp32 mini runs). Small models use a core far below its peak, so these
# are what a CPU study's estimate needs; fp32 takes a value between the two CPU kinds.
CPU_FLOPS_PER_CORE = {"fp32": 20e9, "bf16": 40e9, "fp16": 20e9}
# Training-set sizes of the named datasets (synthetic: data.num_train). An ImageFolder is
# assumed to be ImageNet-1k.
TRAIN_IMAGES = {"imagefolder": REF_IMAGES, "imagenet100": 126_689, "cifar10": 50_000,
                "cifar100": 50_000, "stl10": 105_000, "digits": 1_438}  # digits: 80 % of 1797


def mlp_macs(dims: list[int]) -> int:
    """Multiply-adds of a stack of Linears through `dims` (one image)."""
    return sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=False))


def conv_macs(h_out: int, w_out: int, k: int, c_in: int, c_out: int) -> int:
    return h_out * w_out * k * k * c_in * c_out


def vit_macs(img_size: int, patch_size: int, embed_dim: int, depth: int, mlp_ratio: float = 4.0,
             cls_token: bool = True, conv_stem: bool = False) -> int:
    """Forward multiply-adds of a ViT on one image: patch embedding + blocks."""
    grid = img_size // patch_size
    tokens = grid * grid + (1 if cls_token else 0)
    d = embed_dim
    if conv_stem:
        n = int(math.log2(patch_size))
        size, c_in, c_out, stem = img_size, 3, d // 2 ** (n - 1), 0
        for _ in range(n):
            size //= 2
            stem += conv_macs(size, size, 3, c_in, c_out)
            c_in, c_out = c_out, c_out * 2
        stem += conv_macs(grid, grid, 1, c_in, d)
    else:
        stem = grid * grid * 3 * patch_size * patch_size * d
    linear = (4 + 2 * mlp_ratio) * d * d * tokens  # qkv, proj, two MLP layers
    attention = 2 * tokens * tokens * d  # q k^T and attn v
    return int(stem + depth * (linear + attention))


def resnet50_macs(img_size: int) -> int:
    """Forward multiply-adds of a torchvision ResNet-50 (v1.5) on one image, without fc."""
    size = math.ceil(img_size / 2)
    total = conv_macs(size, size, 7, 3, 64)
    size = math.ceil(size / 2)  # max pool
    c_in = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            s = stride if b == 0 else 1
            out = math.ceil(size / s)
            total += conv_macs(size, size, 1, c_in, width)
            total += conv_macs(out, out, 3, width, width)
            total += conv_macs(out, out, 1, width, width * 4)
            if b == 0:
                total += conv_macs(out, out, 1, c_in, width * 4)
            size, c_in = out, width * 4
    return total


def backbone_macs(model: Any) -> tuple[int, int]:
    """(forward multiply-adds per image, feature width) of `model` (a ModelConfig)."""
    if model.arch == "resnet50":
        return resnet50_macs(model.img_size), 2048
    from moco3.archs import VIT_ARCHS

    arch = VIT_ARCHS[model.arch]
    width = model.embed_dim or arch["embed_dim"]
    macs = vit_macs(model.img_size, model.patch_size, width, model.depth or arch["depth"],
                    mlp_ratio=arch.get("mlp_ratio", 4.0), cls_token=model.pooling == "cls",
                    conv_stem=model.patch_embed == "conv_stem")
    return macs, width


def head_macs(model: Any, feature_dim: int) -> int:
    """Projector (3 layers for ViT, 2 for R50) + predictor (2 layers) multiply-adds."""
    hidden = [model.mlp_dim] * (1 if model.arch == "resnet50" else 2)
    macs = mlp_macs([feature_dim, *hidden, model.dim])
    if model.predictor:
        macs += mlp_macs([model.dim, model.mlp_dim, model.dim])
    return macs


def train_flops_per_image(model: Any) -> float:
    """FLOPs of one training image: 2 views x (forward + backward (2x) + momentum forward)."""
    backbone, width = backbone_macs(model)
    return 2.0 * 2 * 4 * (backbone + head_macs(model, width))


def _reference_flops() -> float:
    class _ViTB:
        arch, img_size, patch_size, embed_dim, depth = "vit_base", 224, 16, None, None
        pooling, patch_embed, mlp_dim, dim, predictor = "cls", "frozen", 4096, 256, True
    return train_flops_per_image(_ViTB)


def train_images(cfg: Any) -> int:
    if cfg.data.name in GENERATED_DATASETS:
        return int(cfg.data.num_train)
    return TRAIN_IMAGES.get(cfg.data.name, REF_IMAGES)


def knn_flops(cfg: Any) -> float:
    """FLOPs of the kNN monitor: at step 0, every knn_every steps and at the end, one
    backbone forward of the knn_memory training images and the knn_queries held-out images.
    At a dense cadence (a stability ladder's every 5 steps) it is a large part of a run."""
    t = cfg.train
    if not t.knn_every:
        return 0.0
    images = train_images(cfg)
    steps = int(t.epochs) * max(1, images // int(t.batch_size))
    queries = int(t.knn_queries)
    if cfg.data.name in GENERATED_DATASETS:
        queries = min(queries, int(cfg.data.num_val))
    per_evaluation = min(int(t.knn_memory), images) + queries
    return 2.0 * backbone_macs(cfg.model)[0] * per_evaluation * (steps // int(t.knn_every) + 2)


def probe_flops(cfg: Any) -> float:
    """FLOPs of the linear probe's backbone forwards. Without augmentation the probe computes
    each training image's features once and trains the classifier on them (moco3/probe.py),
    so its epochs cost almost nothing; with augmentation every epoch forwards every image."""
    if not cfg.probe.enabled:
        return 0.0
    passes = cfg.probe.epochs if cfg.probe.augment else 1
    return 2.0 * backbone_macs(cfg.model)[0] * train_images(cfg) * passes


def run_flops(cfg: Any) -> float:
    """Total FLOPs of one run config: pre-training, its kNN monitor and the linear probe."""
    pretrain = train_flops_per_image(cfg.model) * train_images(cfg) * cfg.train.epochs
    return pretrain + knn_flops(cfg) + probe_flops(cfg)


def gpu_hours(cfg: Any) -> float:
    """Estimated GPU-hours of one run, scaled from the paper's ViT-B compute figure."""
    ref = _reference_flops() * REF_IMAGES * REF_EPOCHS
    return REF_GPU_HOURS * run_flops(cfg) / ref


def cpu_core_hours(cfg: Any, precision: str | None = None) -> float:
    """Estimated CPU core-hours of one run on a machine like the ones measured here, in
    `precision` (what `auto` resolves to on the CPU that will train; default: the config's
    own value, fp32's rate for `auto`)."""
    precision = precision or cfg.train.precision
    rate = CPU_FLOPS_PER_CORE.get(precision, CPU_FLOPS_PER_CORE["fp32"])
    return run_flops(cfg) / rate / 3600.0
