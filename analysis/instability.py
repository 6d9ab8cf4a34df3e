"""The one definition of training instability: gradient spikes and kNN dips.

The training job (``moco3/monitor.py``) writes its ``grad_spike`` / ``knn_dip`` event rows
and its summary counts with these functions, and the report recomputes them from the logged
series with the same functions, so the two never disagree. Pure standard library on purpose:
no numpy, no torch, no moco3 -- the job imports this module in its hot loop and the report
must run anywhere.

Gradient spike (the paper's "a gradient spike causes a dip in the kNN curve"; spikes show
first in the patch projection and tens of iterations later in the last layers)
    A value of a gradient-norm series is a spike when it exceeds ``factor`` times the median
    of the last ``window`` finite values before it, once at least ``min_history`` finite
    values are available. A non-finite value (inf/nan: an overflow or a diverging step) is
    always a spike and never enters the history. The median, not the mean, so that one spike
    does not raise the bar for the next one; spikes themselves do stay in the history.

kNN dip (the paper's kNN-curve "dips" and "partial restarts")
    ``running_max`` is the best kNN accuracy (percent) so far. A dip starts at the first
    value lower than ``running_max - points`` after the curve had been within ``points`` of
    its running max (at the start it is); it ends when the curve comes back within
    ``points`` of the running max. Its depth is the deepest drop below the running max while
    it lasted. Non-finite accuracies are ignored.

Defaults: SPIKE_FACTOR=4.0, SPIKE_WINDOW=20, SPIKE_MIN_HISTORY=5, DIP_POINTS=3.0 (percentage
points of top-1). Every threshold is a parameter.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

SPIKE_FACTOR = 4.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 5
DIP_POINTS = 3.0


def _median_of_sorted(values: Sequence[float]) -> float:
    """Median of an already sorted, non-empty sequence (mean of the two middle values)."""
    n = len(values)
    mid = n // 2
    if n % 2:
        return float(values[mid])
    return 0.5 * (values[mid - 1] + values[mid])


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def is_spike(
    history: Sequence[float],
    value: float,
    factor: float = SPIKE_FACTOR,
    window: int = SPIKE_WINDOW,
    min_history: int = SPIKE_MIN_HISTORY,
) -> bool:
    """Whether ``value`` is a spike given the values before it (``history``, oldest first).

    True when ``value`` is non-finite, or when at least ``min_history`` finite values exist
    among the last ``window`` finite values of ``history`` and ``value`` exceeds ``factor``
    times their median.
    """
    if value is None:
        return False
    if not math.isfinite(value):
        return True
    recent: list[float] = []
    # Walk back over the history collecting the last `window` finite values; non-finite
    # entries (earlier overflows) are skipped rather than ending the window.
    for h in reversed(history):
        if _finite(h):
            recent.append(float(h))
            if len(recent) == window:
                break
    if len(recent) < max(1, min_history):
        return False
    recent.sort()
    return value > factor * _median_of_sorted(recent)


def find_spikes(
    series: Sequence[float],
    factor: float = SPIKE_FACTOR,
    window: int = SPIKE_WINDOW,
    min_history: int = SPIKE_MIN_HISTORY,
) -> list[int]:
    """Indices ``i`` of ``series`` where ``is_spike(series[:i], series[i], ...)`` holds.

    Same result as calling ``is_spike`` at every index, in O(n * window) with a sorted
    sliding window instead of O(n * window log window). ``None`` entries are missing values:
    never spikes and never part of the history.
    """
    spikes: list[int] = []
    recent: deque[float] = deque()  # last `window` finite values, oldest first
    ordered: list[float] = []  # the same values, sorted
    need = max(1, min_history)
    for i, value in enumerate(series):
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value):
            spikes.append(i)
            continue
        if len(ordered) >= need and value > factor * _median_of_sorted(ordered):
            spikes.append(i)
        recent.append(value)
        bisect.insort(ordered, value)
        if len(recent) > window:
            old = recent.popleft()
            del ordered[bisect.bisect_left(ordered, old)]
    return spikes


def dip_depth(running_max: float, value: float) -> float:
    """Points below the running max (>= 0); 0 for a non-finite value (it is ignored)."""
    if not (_finite(running_max) and _finite(value)):
        return 0.0
    return max(0.0, float(running_max) - float(value))


def find_dips(series: Sequence[float], points: float = DIP_POINTS) -> list[tuple[int, float]]:
    """Dips of a kNN-accuracy curve: ``(index where the dip starts, depth in points)``.

    A dip starts at the first value below ``running_max - points`` after the curve had been
    within ``points`` of its running max, and lasts until it is back within ``points``;
    depth is the deepest drop below the running max during the dip.
    """
    dips: list[tuple[int, float]] = []
    running_max = -math.inf
    start = -1  # index of the current dip's start, -1 when not in a dip
    depth = 0.0
    for i, value in enumerate(series):
        if not _finite(value):
            continue
        value = float(value)
        running_max = max(running_max, value)
        drop = running_max - value
        if start < 0:
            if drop > points:
                start, depth = i, drop
        elif drop > points:
            depth = max(depth, drop)
        else:
            dips.append((start, depth))
            start = -1
    if start >= 0:  # still in a dip at the end of the series
        dips.append((start, depth))
    return dips


def max_dip(series: Sequence[float]) -> float:
    """Largest drop below the running max anywhere in ``series`` (points), 0 if none."""
    running_max = -math.inf
    worst = 0.0
    for value in series:
        if not _finite(value):
            continue
        running_max = max(running_max, float(value))
        worst = max(worst, dip_depth(running_max, value))
    return worst
