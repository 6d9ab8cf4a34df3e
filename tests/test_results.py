"""experiments/results.py: the study cost it writes into RUN.md beside the wall time."""

from __future__ import annotations

import os

from experiments.results import run_minutes


def test_run_minutes_sums_the_runs_training_time_over_the_runs_trained_at_once(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("ablation,run_id,train_seconds,threads\n"
                   "a,x/seed=0,120,1\na,x/seed=1,240,1\na,y/seed=0,,1\nb,z/seed=0,999,1\n")
    parallel = len(os.sched_getaffinity(0))
    assert run_minutes(csv, "a") == (f"{6 / parallel:.1f} min (2 runs, {parallel} at a time; "
                                     "one run 2.0-4.0 min)")
    assert run_minutes(csv, "c") == "-"
    assert run_minutes(tmp_path / "missing.csv", "a") == "-"
