"""The job of one run: pre-train, then the linear probe. A submitit callable, and a command.

    python -m experiments.job RUN_DIR       # what the local launcher runs for each run

The job reads `RUN_DIR/config.yaml` (written by the launcher on the login node) and nothing
else. `moco3.train.train` resumes by itself from the run folder and checkpoints on its own
schedule and on SIGTERM/USR1/USR2; `checkpoint()` - submitit's hook, called inside the
signal handler on global rank 0 - therefore only hands back the resubmission: it must not
save or call collectives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import submitit


class RunJob:
    """Pre-train the run in `run_dir` (resuming if it can) and probe it when it is done."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(Path(run_dir).resolve())

    def __call__(self) -> str:
        # Imported here: the launcher pickles this object without loading torch.
        from moco3 import dist, probe, train
        from moco3.config import load_run_config

        run_dir = Path(self.run_dir)
        cfg = load_run_config(run_dir / "config.yaml")
        dist.init_distributed()
        state = train.train(cfg, run_dir)
        if state == "done" and cfg.probe.enabled:
            probe.probe(cfg, run_dir)
        return state

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job; it resumes from the checkpoint train saved on the signal."""
        return submitit.helpers.DelayedSubmission(RunJob(self.run_dir))

    def __repr__(self) -> str:
        return f"RunJob({self.run_dir!r})"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m experiments.job RUN_DIR", file=sys.stderr)
        return 2
    state = RunJob(argv[0])()
    return 0 if state in ("done", "diverged") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
