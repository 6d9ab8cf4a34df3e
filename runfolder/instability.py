"""The one definition of training instability: gradient spikes and kNN dips.

The training job applies these detectors at every step (gradient norms) and at every kNN
evaluation, writes an event row for each spike and dip, and counts them in summary.json;
the report reads those events and counts, and applies the same detectors to any series it
has to recompute. One class per rule, used by both, so the numbers always agree. Pure
standard library: the job runs this in its hot loop and the report must run anywhere.

Gradient spike (the paper: "a gradient spike causes a dip in the kNN curve"; spikes show
first in the patch projection, tens of iterations later in the last layers)
    A value of a gradient-norm series is a spike when it exceeds `factor` times the median
    of the last `window` finite values before it, once at least `min_history` of them
    exist. A non-finite value (an overflow, a diverging step) is always a spike and never
    enters the history. The median, not the mean, so that one spike does not raise the bar
    for the next one; spikes themselves do stay in the history. The event records that
    median (`reference`) and `threshold` = factor * median: the threshold actually applied.

kNN dip (the paper's kNN-curve "dips" and "partial restarts")
    `running_max` is the best kNN accuracy (percent) so far. A dip starts at the first value
    lower than `running_max - points` after the curve had been within `points` of its
    running max (at the start it is); it ends when the curve comes back within `points`.
    Its depth is the deepest drop below the running max while it lasted. Non-finite
    accuracies are ignored.

Defaults (every threshold is a parameter; the job takes them from train.spike_factor,
train.spike_window and train.dip_points): SPIKE_FACTOR=4.0, SPIKE_WINDOW=20,
SPIKE_MIN_HISTORY=5, DIP_POINTS=3.0.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SPIKE_FACTOR = 4.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 5
DIP_POINTS = 3.0


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def median_of_sorted(values: Sequence[float]) -> float:
    """Median of an already sorted, non-empty sequence (mean of the two middle values)."""
    n = len(values)
    mid = n // 2
    return float(values[mid]) if n % 2 else 0.5 * (values[mid - 1] + values[mid])


@dataclass
class Spike:
    """A spike: the value, the median it was compared with, and the threshold applied."""

    value: float
    reference: float
    threshold: float


@dataclass
class SpikeDetector:
    """The spike rule over one gradient-norm series, fed one value at a time."""

    factor: float = SPIKE_FACTOR
    window: int = SPIKE_WINDOW
    min_history: int = SPIKE_MIN_HISTORY
    recent: deque = field(default_factory=deque)  # the last `window` finite values
    ordered: list = field(default_factory=list)  # the same values, sorted

    def check(self, value: float | None) -> Spike | None:
        """Whether `value` spikes against the values before it; then it joins the history.
        None is a missing value: never a spike, never history."""
        if value is None:
            return None
        value = float(value)
        if not math.isfinite(value):
            return Spike(value, math.nan, math.nan)
        spike = None
        if len(self.ordered) >= max(1, self.min_history):
            reference = median_of_sorted(self.ordered)
            if value > self.factor * reference:
                spike = Spike(value, reference, self.factor * reference)
        self.recent.append(value)
        bisect.insort(self.ordered, value)
        if len(self.recent) > self.window:
            old = self.recent.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        return spike

    def state_dict(self) -> list[float]:
        return list(self.recent)

    def load_state_dict(self, history: Sequence[float]) -> None:
        self.recent = deque(float(v) for v in history)
        self.ordered = sorted(self.recent)


@dataclass
class Dip:
    """A dip's start: the value, the running max it fell from, and the threshold crossed."""

    value: float
    reference: float
    threshold: float


@dataclass
class DipTracker:
    """The dip rule over one kNN-accuracy series, fed one value at a time."""

    points: float = DIP_POINTS
    running_max: float | None = None
    in_dip: bool = False
    num_dips: int = 0
    depths: list = field(default_factory=list)  # depth of each dip so far
    max_drop: float = 0.0  # the deepest drop below the running max anywhere

    def update(self, value: float | None) -> Dip | None:
        """Feed one accuracy; returns the Dip when one starts at this value."""
        if not _finite(value):
            return None
        value = float(value)
        if self.running_max is None or value > self.running_max:
            self.running_max = value
        drop = self.running_max - value
        self.max_drop = max(self.max_drop, drop)
        if drop <= self.points:
            self.in_dip = False
            return None
        if self.in_dip:
            self.depths[-1] = max(self.depths[-1], drop)
            return None
        self.in_dip = True
        self.num_dips += 1
        self.depths.append(drop)
        return Dip(value, self.running_max, self.running_max - self.points)

    def state_dict(self) -> dict[str, Any]:
        return {"running_max": self.running_max, "in_dip": self.in_dip,
                "num_dips": self.num_dips, "depths": list(self.depths),
                "max_drop": self.max_drop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running_max = state["running_max"]
        self.in_dip = bool(state["in_dip"])
        self.num_dips = int(state["num_dips"])
        self.depths = [float(d) for d in state["depths"]]
        self.max_drop = float(state["max_drop"])


def find_dips(series: Sequence[float | None], points: float = DIP_POINTS
              ) -> list[tuple[int, float]]:
    """(index where each dip starts, its depth in points), as the job finds them."""
    tracker = DipTracker(points)
    starts = [i for i, value in enumerate(series) if tracker.update(value) is not None]
    return list(zip(starts, tracker.depths, strict=True))


def max_dip(series: Sequence[float | None]) -> float:
    """The largest drop below the running max anywhere in `series` (points), 0 if none."""
    tracker = DipTracker()
    for value in series:
        tracker.update(value)
    return tracker.max_drop
