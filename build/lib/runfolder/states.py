"""The states of a run (status.json "state") and which of them are finished.

    pending    written by the launcher; no job has started it yet
    running    a job is pre-training it (phase "pretrain") or probing it (phase "probe")
    preempted  stopped at a step boundary with a checkpoint; a relaunch resumes it
    failed     the job raised; status.json "error" says why in one sentence
    diverged   the loss became non-finite: a result of an instability study, not an error
    done       pre-trained and probed
"""

from __future__ import annotations

STATES = ("pending", "running", "done", "failed", "diverged", "preempted")

# Results: never run again and never overwritten by a relaunch.
RESULTS = ("done", "diverged")
# No job is going to move these any further: results and failures. A launch that waits
# for its runs stops waiting once every run is in one of these.
ENDED = (*RESULTS, "failed")
