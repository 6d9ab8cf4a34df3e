"""The weighted kNN classifier of the kNN monitor (Wu et al. 2018, the MoCo v3 appendix),
on the encoder's features or, as the floor to beat, on raw pixels.

A representation has learned something beyond the pixels only when its kNN accuracy beats
the same classifier on the ImageNet-normalised pixels of the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from moco3.augment import IMAGENET_MEAN, IMAGENET_STD


@torch.no_grad()
def extract_features(
    features: Callable[[Tensor], Tensor],
    loader: Iterable,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Run `features` over a loader of (images, labels, ...) batches.

    Returns L2-normalised features (N, D) in fp32 on CPU and labels (N,).
    """
    feats, labels = [], []
    for batch in loader:
        x, y = batch[0], batch[1]
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            f = features(x.to(device, non_blocking=True))
        feats.append(F.normalize(f.float(), dim=1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def pixel_features(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> L2-normalised (N, 3*H*W) of ImageNet-normalised pixels."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    return F.normalize(x.flatten(1), dim=1)


def weighted_knn_top1(
    memory: Tensor,
    memory_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = 20,
    t: float | None = 0.07,
    chunk: int = 1024,
) -> float:
    """kNN top-1 in percent. memory (M, D) and queries (Q, D) are L2-normalised; each query
    votes with its k most cosine-similar memory items, weighted by exp(sim / t) (t=None: a
    plain majority vote)."""
    k = min(k, memory.shape[0])
    correct = 0
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ memory.T  # (q, M)
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = torch.ones_like(top_sim) if t is None else (top_sim / t).exp()
        votes = torch.zeros(top_sim.shape[0], num_classes)
        votes.scatter_add_(1, memory_labels[top_idx], weights)
        correct += int((votes.argmax(1) == query_labels[start:start + chunk]).sum())
    return 100.0 * correct / max(1, queries.shape[0])
