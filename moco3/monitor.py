"""What the paper's instability analysis reads: kNN accuracy, per-layer gradient norms,
and the spike / dip events derived from them.

The definitions of a spike and a dip live in `analysis/instability.py` (pure Python), shared
with the report so that the events written here and the counts in the tables agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from analysis.instability import dip_depth, is_spike


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
