"""The states of a run (status.json "state") and which of them are finished.

    pending    written by the launcher; no job has started it yet
    running    a job is pre-training it (phase "pretrain") or probing it (phase "probe")
    preempted  stopped at a step boundary with a checkpoint; a relaunch resumes it
    failed     the job raised; status.json "error" says why in one sentence
    diverged   the loss became non-finite: a result of an instability study, not an error
    done       pre-trained and probed
"""

from __future__ import annotations

# Each state once, by name: the layers import these and never spell a state themselves
# (tests/test_layers.py scans for that).
PENDING, RUNNING, DONE = "pending", "running", "done"
FAILED, DIVERGED, PREEMPTED = "failed", "diverged", "preempted"
STATES = (PENDING, RUNNING, DONE, FAILED, DIVERGED, PREEMPTED)

# Results: never run again and never overwritten by a relaunch.
RESULTS = (DONE, DIVERGED)
# No job is going to move these any further: results and failures. A launch that waits
# for its runs stops waiting once every run is in one of these.
ENDED = (*RESULTS, FAILED)
# What a reader shows for a run folder whose status.json is missing or unreadable; no job
# ever writes it.
UNKNOWN = "unknown"
# Runs with their final numbers (the accuracy tables).
FINISHED = (DONE,)
# Pre-training reached its end, normally or by diverging (curves, instability counts).
TRAINED = RESULTS
# Started and not ended: the job is at it, or a relaunch resumes it from its checkpoint.
IN_PROGRESS = (RUNNING, PREEMPTED)
# States a live job may hold: queued for one (pending) or being run (running).
MAY_HAVE_A_JOB = (PENDING, RUNNING)
# No metrics are expected yet: not started, or no readable status.json.
NO_METRICS_YET = (PENDING, UNKNOWN)
# The order in which reports list states.
DISPLAY_ORDER = (DONE, DIVERGED, FAILED, RUNNING, PREEMPTED, PENDING, UNKNOWN)
