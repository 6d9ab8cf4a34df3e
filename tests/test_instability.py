"""analysis/instability.py: spikes and dips on constructed series (the one definition)."""

from __future__ import annotations

import math
import random

import pytest
from analysis.instability import dip_depth, find_dips, find_spikes, is_spike, max_dip


def test_spike_is_strictly_above_factor_times_median():
    history = [1.0] * 10
    assert is_spike(history, 4.01)
    assert not is_spike(history, 4.0)
    assert is_spike(history, 2.5, factor=2.0)


def test_spike_needs_min_history_and_non_finite_is_always_a_spike():
    assert not is_spike([1.0] * 4, 100.0)  # 4 < min_history=5
    assert is_spike([1.0] * 5, 100.0)
    assert is_spike([], math.inf)
    assert is_spike([1.0], math.nan)


def test_spike_median_uses_last_window_finite_values():
    history = [100.0] * 30 + [1.0] * 20
    assert is_spike(history, 5.0)  # median of the last 20 is 1
    assert not is_spike(history, 5.0, window=50)  # median of the last 50 is 100
    # Non-finite entries are skipped, not counted in the window.
    assert is_spike([1.0] * 5 + [math.inf, math.nan], 5.0)


def test_find_spikes_marks_isolated_spikes_and_keeps_them_in_history():
    series = [1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 9.0, 1.0, 8.0, 1.0, math.inf, 1.0]
    assert find_spikes(series) == [6, 8, 10]
    assert find_spikes(series, factor=10.0) == [10]
    assert find_spikes([None, 1.0, None, 1.0, 1.0, 1.0, 1.0, 50.0]) == [7]


def test_find_spikes_agrees_with_is_spike_everywhere():
    rng = random.Random(0)
    series: list[float | None] = []
    for _ in range(600):
        u = rng.random()
        series.append(math.inf if u < 0.01 else math.nan if u < 0.02 else
                      rng.lognormvariate(0, 0.3) * (8 if u > 0.97 else 1))
    for window, min_history in ((20, 5), (7, 3), (4, 4)):
        expected = [i for i, v in enumerate(series)
                    if is_spike(series[:i], v, 4.0, window, min_history)]
        assert find_spikes(series, 4.0, window, min_history) == expected
        assert expected  # the series does have spikes


def test_dip_depth_is_never_negative():
    assert dip_depth(30.0, 25.0) == 5.0
    assert dip_depth(30.0, 35.0) == 0.0
    assert dip_depth(30.0, math.nan) == 0.0


def test_find_dips_start_depth_and_recovery():
    series = [10, 20, 30, 25, 31, 20, 21, 32]
    assert find_dips(series, 3.0) == [(3, 5.0), (5, 11.0)]
    assert max_dip(series) == 11.0


def test_dip_threshold_is_strict_and_open_dips_count():
    assert find_dips([30, 27, 30], 3.0) == []  # exactly `points` below is no dip
    assert find_dips([30, 26.9, 26, 20], 3.0) == [(1, 10.0)]  # still in the dip at the end
    # Back within `points` of the running max (28 >= 27) ends a dip; a new drop starts one.
    dips = find_dips([30, 26.9, 28, 20], 3.0)
    assert [start for start, _ in dips] == [1, 3]
    assert dips[0][1] == pytest.approx(3.1) and dips[1][1] == 10.0
    assert find_dips([30, math.nan, 29, 10, 29], 3.0) == [(3, 20.0)]
    assert max_dip([]) == 0.0
    assert max_dip([1, 2, 3]) == 0.0


@pytest.mark.parametrize("points,expected", [(1.0, 2), (6.0, 1), (20.0, 0)])
def test_dips_depend_on_threshold(points, expected):
    assert len(find_dips([50, 48, 50, 40, 50], points)) == expected


def test_module_is_pure_stdlib():
    import analysis.instability as module

    source = open(module.__file__).read()
    for name in ("numpy", "torch", "pandas", "moco3"):
        assert f"import {name}" not in source
