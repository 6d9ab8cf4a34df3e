"""Config -> objects: the device, the MoCo model, the dataset splits, the evaluation
transform and the attention kernel of a run. The trainer, the probe, export and the
benchmarks build from a run config through these."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as torch_dist
from omegaconf import DictConfig
from torch import nn

from moco3.augment import EvalTransform
from moco3.config import ConfigError
from moco3.data import build_dataset, eval_crop_fraction
from moco3.model import MoCo, build_model
from moco3.negatives import needs_momentum_encoder

VIT_KEYS = ("img_size", "patch_size", "depth", "embed_dim", "num_heads", "patch_embed",
            "pos_embed", "pooling", "final_norm", "drop_path_rate")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use auto or cpu.")
        index = torch.cuda.current_device() if torch_dist.is_initialized() else 0
        return torch.device("cuda", index)
    return torch.device("cpu")


def build_moco(cfg: DictConfig, global_bn: bool) -> MoCo:
    """The MoCo model of a run config."""
    m = cfg.model
    vit = {} if m.arch == "resnet50" else {k: m[k] for k in VIT_KEYS if m[k] is not None}
    return build_model(m.arch, dim=m.dim, mlp_dim=m.mlp_dim, head_bn=m.head_bn,
                       predictor=m.predictor,
                       momentum_encoder=needs_momentum_encoder(cfg.moco.negatives),
                       global_bn=global_bn, **vit)


def build_split(cfg: DictConfig, split: str) -> Any:
    """The run's dataset split: items (uint8 image (3,H,W), label)."""
    d = cfg.data
    return build_dataset(d.name, split, root=d.root, img_size=cfg.model.img_size,
                         num_train=d.num_train, num_val=d.num_val, seed=d.seed,
                         download=d.download, class_list=d.class_list)


def eval_transform(cfg: DictConfig) -> EvalTransform:
    """Resize + centre crop + normalise for kNN and probe features."""
    return EvalTransform(cfg.model.img_size, eval_crop_fraction(cfg.data.name, cfg.data.eval_crop))


def fused_attention_is_faster(device: torch.device, precision: str) -> bool:
    """Which attention kernel a run uses: the same math, chosen by measurement
    (benchmarks/train_step.py). Fused (scaled_dot_product_attention) on GPUs, and on CPUs
    in fp32, where torch's CPU flash kernel beat the explicit softmax(q k^T) v by 5-10 % on
    an AVX2 EPYC; explicit on CPUs in bf16, where the flash kernel was the slower one (an
    AVX-512 BF16 Xeon: a bf16 step 1.19 s fused vs 0.91 s explicit)."""
    return device.type == "cuda" or precision == "fp32"


def use_fused_attention(model: nn.Module, device: torch.device, precision: str = "fp32"
                        ) -> None:
    """Set every attention layer of `model` to the kernel that is faster here."""
    fused = fused_attention_is_faster(device, precision)
    for module in model.modules():
        if hasattr(module, "set_fused_attention"):
            module.set_fused_attention(fused)


def views_batched_is_faster(device: torch.device, precision: str) -> bool:
    """Whether a BN-free backbone takes the two views as one batch of 2B (one larger matmul
    per layer) or one view at a time, as the official code does: the same math, chosen by
    measurement (benchmarks/train_step.py, 2 threads, against the real official step). 2B on
    GPUs, in bf16, and on AVX2 CPUs; one view at a time in fp32 on CPUs with AVX-512, where
    the 2B batch's activations spill out of cache and the memory-bound ops (GELU, copies)
    ran 4x slower (an AMD EPYC with AVX-512 BF16, 32 px ViT: 0.95x the official step batched
    against 1.04x apart; bf16: 2.46x batched against 2.32x apart)."""
    if device.type == "cuda" or precision != "fp32":
        return True
    return not torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def use_fastest_step(model: MoCo, device: torch.device, precision: str) -> None:
    """The attention kernel and the view batching that are faster here (same math)."""
    use_fused_attention(model, device, precision)
    if model.batch_views:  # a backbone with BN must see each view alone: never batched
        model.batch_views = views_batched_is_faster(device, precision)
