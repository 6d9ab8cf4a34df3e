"""SIGTERM / SIGUSR1 / SIGUSR2: checkpoint at the next step boundary, then hand over.

The handler only records the signal (a signal handler must not save or call collectives).
The training loop checks `requested` at each step boundary, all ranks agree on it, the main
process checkpoints, and then `hand_over()` calls whatever handler was installed before ours:
under submitit that is its requeue hook (USR2: requeue + exit; TERM: ignored, SLURM's own
requeue restarts the job), elsewhere nothing, and the run simply ends as `preempted`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class PreemptionFlag:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> PreemptionFlag:
        # Signals can only be handled in the main thread (a debugger or a test may not be).
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def hand_over(self) -> None:
        """Restore the earlier handlers and pass the recorded signal to the earlier one."""
        previous = dict(self._previous)
        self.restore()
        handler = previous.get(self.signum) if self.signum is not None else None
        if callable(handler):
            handler(self.signum, None)
