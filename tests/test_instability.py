"""runfolder/instability.py: the one spike rule and the one dip rule, on constructed series,
and the job (moco3.monitor, every step) and the report (analysis) agreeing on them."""

from __future__ import annotations

import math
import random

import pytest

from moco3.runfolder.instability import (
    SPIKE_FACTOR,
    SPIKE_MIN_HISTORY,
    SPIKE_WINDOW,
    DipTracker,
    SpikeDetector,
    find_dips,
    max_dip,
)


def find_spikes(series, factor=SPIKE_FACTOR, window=SPIKE_WINDOW, min_history=SPIKE_MIN_HISTORY):
    """Indices of the spikes of `series`, fed to one SpikeDetector step by step as the job does."""
    detector = SpikeDetector(factor, window, min_history)
    return [i for i, value in enumerate(series) if detector.check(value) is not None]


def is_spike(history: list[float], value: float, factor: float = 4.0, window: int = 20,
             min_history: int = 5) -> bool:
    detector = SpikeDetector(factor, window, min_history)
    for h in history:
        detector.check(h)
    return detector.check(value) is not None


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


def test_a_spike_reports_the_median_and_the_threshold_it_was_held_to():
    detector = SpikeDetector(factor=4.0, window=4, min_history=2)
    for value in (1.0, 2.0, 3.0, 10.0):  # even window: the median is the mean of the middle
        detector.check(value)
    spike = detector.check(11.0)
    assert spike is not None and spike.reference == 2.5 and spike.threshold == 10.0


def test_find_spikes_marks_isolated_spikes_and_keeps_them_in_history():
    series = [1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 9.0, 1.0, 8.0, 1.0, math.inf, 1.0]
    assert find_spikes(series) == [6, 8, 10]
    assert find_spikes(series, factor=10.0) == [10]
    assert find_spikes([None, 1.0, None, 1.0, 1.0, 1.0, 1.0, 50.0]) == [7]


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


def test_detectors_survive_a_checkpoint():
    rng = random.Random(1)
    series = [rng.lognormvariate(0, 0.5) * (6 if rng.random() > 0.95 else 1) for _ in range(300)]
    whole = find_spikes(series, 4.0, 20, 5)
    first = SpikeDetector(4.0, 20, 5)
    hits = [i for i, v in enumerate(series[:137]) if first.check(v)]
    resumed = SpikeDetector(4.0, 20, 5)
    resumed.load_state_dict(first.state_dict())
    hits += [137 + i for i, v in enumerate(series[137:]) if resumed.check(v)]
    assert hits == whole and whole
    tracker = DipTracker(3.0)
    for v in [10, 30, 20]:
        tracker.update(v)
    again = DipTracker(3.0)
    again.load_state_dict(tracker.state_dict())
    assert again.update(19) is None and again.depths == [11.0]


def test_the_job_and_the_report_find_the_same_events():
    """The same series fed to the training job's monitor (one step at a time) and to the
    analysis functions give the same spikes, thresholds and dips."""
    from moco3.analysis.summarize import from_eval_rows
    from moco3.monitor import InstabilityMonitor

    rng = random.Random(0)
    norms = [math.inf if rng.random() < 0.01 else
             rng.lognormvariate(0, 0.3) * (8 if rng.random() > 0.97 else 1) for _ in range(600)]
    knn = [min(90.0, 10 + i * 0.8 + rng.uniform(-4, 4)) for i in range(60)]
    monitor = InstabilityMonitor(4.0, 20, dip_points=3.0)
    events = []
    for step, value in enumerate(norms):
        events += [{"step": step, **e} for e in monitor.grad_norms({"patch_embed": value})]
    for step, value in enumerate(knn):
        events += [{"step": step, **e} for e in monitor.knn(value)]
    spikes = [e["step"] for e in events if e["event"] == "grad_spike"]
    assert spikes == find_spikes(norms) and len(spikes) > 5
    for e in events:
        if e["event"] == "grad_spike" and math.isfinite(e["value"]):
            assert e["value"] > e["threshold"] == 4.0 * e["reference"]
    dips = [e["step"] for e in events if e["event"] == "knn_dip"]
    assert dips == [start for start, _ in find_dips(knn)] and dips
    assert monitor.dips.max_drop == max_dip(knn)
    # The report counts the job's events.
    rows = [{"kind": "event", "event": "grad_spike", "group": "patch_embed", "step": s}
            for s in spikes] + [{"kind": "knn", "step": i, "knn_top1": v}
                                for i, v in enumerate(knn)]
    derived = from_eval_rows(rows, "patch_embed")
    assert derived["num_spikes_first"] == monitor.spikes["patch_embed"] == len(spikes)
    assert derived["num_knn_dips"] == monitor.dips.num_dips == len(dips)


def test_the_contract_package_is_pure_stdlib():
    from moco3 import runfolder

    for module in ("instability", "rows", "states", "layout", "atomic"):
        source = open(f"{runfolder.__path__[0]}/{module}.py").read()
        for name in ("numpy", "torch", "pandas", "moco3.experiments", "moco3.analysis"):
            assert f"import {name}" not in source and f"from {name}" not in source
        # moco3's own names only for the contract's siblings, never the job's code
        assert source.count("moco3.") == source.count("moco3.runfolder."), module
