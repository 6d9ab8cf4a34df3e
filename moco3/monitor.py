"""What the paper's instability analysis reads: kNN accuracy, per-layer gradient norms,
and the spike / dip events derived from them.

The definitions of a spike and a dip live in `runfolder/instability.py` (pure Python), shared
with the report so that the events written here and the counts in the tables agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from moco3.runfolder.instability import (
    DIP_POINTS,
    SPIKE_FACTOR,
    SPIKE_MIN_HISTORY,
    SPIKE_WINDOW,
    DipTracker,
    SpikeDetector,
)


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


class InstabilityMonitor:
    """Turns per-step gradient norms and kNN values into event rows, with the detectors of
    `moco3.runfolder.instability` (the report counts with the same ones).

    Its state (each group's recent norms, the kNN dip tracker, the spike counts) is
    checkpointed, so that a resumed run emits exactly the events an uninterrupted one would.
    """

    def __init__(self, spike_factor: float = SPIKE_FACTOR, spike_window: int = SPIKE_WINDOW,
                 spike_min_history: int = SPIKE_MIN_HISTORY, dip_points: float = DIP_POINTS
                 ) -> None:
        self.spike_args = (spike_factor, spike_window, spike_min_history)
        self.detectors: dict[str, SpikeDetector] = {}
        self.dips = DipTracker(dip_points)
        self.spikes: dict[str, int] = {}
        self.skipped_steps = 0  # fp16 steps the GradScaler skipped (overflowed gradients)

    def grad_norms(self, norms: dict[str, float]) -> list[dict[str, Any]]:
        """Spike events for one step's gradient norms (one per group that spikes)."""
        events = []
        for group, value in norms.items():
            detector = self.detectors.setdefault(group, SpikeDetector(*self.spike_args))
            spike = detector.check(value)
            if spike is not None:
                events.append({"event": "grad_spike", "group": group, "value": spike.value,
                               "reference": spike.reference, "threshold": spike.threshold})
                self.spikes[group] = self.spikes.get(group, 0) + 1
        return events

    def skipped_step(self) -> dict[str, Any]:
        """The event of an fp16 step the GradScaler skipped (its unscaled gradients held an
        inf or NaN): the scaler's normal search for a loss scale, not an instability, so it
        is neither a spike nor part of any group's history."""
        self.skipped_steps += 1
        return {"event": "skipped_step"}

    def knn(self, value: float) -> list[dict[str, Any]]:
        """A dip event when kNN accuracy falls more than dip_points below its running max."""
        dip = self.dips.update(value)
        if dip is None:
            return []
        return [{"event": "knn_dip", "value": dip.value, "reference": dip.reference,
                 "threshold": dip.threshold}]

    def state_dict(self) -> dict[str, Any]:
        return {"history": {g: d.state_dict() for g, d in self.detectors.items()},
                "dips": self.dips.state_dict(), "spikes": dict(self.spikes),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.detectors = {}
        for group, history in state["history"].items():
            self.detectors[group] = SpikeDetector(*self.spike_args)
            self.detectors[group].load_state_dict(history)
        self.dips.load_state_dict(state["dips"])
        self.spikes = {k: int(v) for k, v in state["spikes"].items()}
        self.skipped_steps = int(state.get("skipped_steps", 0))
