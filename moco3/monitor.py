"""What the paper's instability analysis reads: kNN accuracy, per-layer gradient norms,
and the spike / dip events derived from them.

The definitions of a spike and a dip live in `analysis/instability.py` (pure Python), shared
with the report so that the events written here and the counts in the tables agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.instability import dip_depth, is_spike


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


def weighted_knn_top1(
    memory: Tensor,
    memory_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = 20,
    t: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted kNN top-1 in percent (Wu et al. 2018, as in the MoCo v3 appendix monitor).

    memory (M, D) and queries (Q, D) are L2-normalised; each query votes with its k most
    cosine-similar memory items weighted by exp(sim / t).
    """
    k = min(k, memory.shape[0])
    correct = 0
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk]
        sim = q @ memory.T  # (q, M)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, memory_labels[top_idx], (top_sim / t).exp())
        correct += (votes.argmax(1) == query_labels[start:start + chunk]).sum().item()
    return 100.0 * correct / max(1, queries.shape[0])


def group_grad_norms(groups: dict[str, list[Tensor]]) -> Tensor:
    """L2 norm of the gradients of each parameter group and of all of them, in one pass.

    Returns a tensor (len(groups) + 1,): the groups in order, then the total over the union
    of the groups' parameters (each parameter counted once). Parameters without a gradient
    (frozen ones) count as zero. No host synchronisation: the result stays on device.
    """
    seen: dict[int, int] = {}
    grads: list[Tensor] = []
    for params in groups.values():
        for p in params:
            if p.grad is not None and id(p) not in seen:
                seen[id(p)] = len(grads)
                grads.append(p.grad)
    if not grads:
        return torch.zeros(len(groups) + 1)
    sq = torch.stack(torch._foreach_norm(grads)).float().square()
    out = []
    for params in groups.values():
        idx = sorted({seen[id(p)] for p in params if id(p) in seen})
        out.append(sq[idx].sum().sqrt() if idx else sq.new_zeros(()))
    out.append(sq.sum().sqrt())
    return torch.stack(out)


@dataclass
class InstabilityMonitor:
    """Turns per-step gradient norms and kNN values into event rows.

    Its state (recent norms per group, the kNN running maximum) is checkpointed so that a
    resumed run emits exactly the events an uninterrupted one would.
    """

    spike_factor: float = 4.0
    spike_window: int = 20
    spike_min_history: int = 5
    dip_points: float = 3.0
    history: dict[str, list[float]] = field(default_factory=dict)
    knn_max: float | None = None
    in_dip: bool = False
    num_dips: int = 0
    max_dip: float = 0.0
    spikes: dict[str, int] = field(default_factory=dict)

    def grad_norms(self, step: int, norms: dict[str, float]) -> list[dict]:
        """Spike events for one step's gradient norms (one per group that spikes)."""
        events = []
        for group, value in norms.items():
            past = self.history.setdefault(group, [])
            if is_spike(past, value, self.spike_factor, self.spike_window,
                        self.spike_min_history):
                recent = sorted(past[-self.spike_window:])
                median = recent[len(recent) // 2] if recent else float("nan")
                events.append({"event": "grad_spike", "group": group, "value": value,
                               "reference": median, "threshold": self.spike_factor * median})
                self.spikes[group] = self.spikes.get(group, 0) + 1
            if math.isfinite(value):  # the median is over finite values (instability.py)
                past.append(value)
            del past[:-self.spike_window]
        return events

    def knn(self, value: float) -> list[dict]:
        """A dip event when kNN accuracy falls more than dip_points below its running max."""
        events = []
        if self.knn_max is None or value > self.knn_max:
            self.knn_max = value
        depth = dip_depth(self.knn_max, value)
        self.max_dip = max(self.max_dip, depth)
        if depth > self.dip_points and not self.in_dip:
            self.in_dip = True
            self.num_dips += 1
            events.append({"event": "knn_dip", "value": value, "reference": self.knn_max,
                           "threshold": self.knn_max - self.dip_points})
        elif depth <= self.dip_points:
            self.in_dip = False
        return events

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()},
                "knn_max": self.knn_max, "in_dip": self.in_dip, "num_dips": self.num_dips,
                "max_dip": self.max_dip, "spikes": dict(self.spikes)}

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: [float(x) for x in v] for k, v in state["history"].items()}
        self.knn_max = state["knn_max"]
        self.in_dip = bool(state["in_dip"])
        self.num_dips = int(state["num_dips"])
        self.max_dip = float(state["max_dip"])
        self.spikes = {k: int(v) for k, v in state["spikes"].items()}
