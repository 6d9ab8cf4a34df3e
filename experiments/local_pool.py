"""The local launcher's worker: runs a launch's jobs on this machine, `parallel` at a time.

    python -m moco3.experiments.local_pool PLAN.json

The launcher writes PLAN.json and starts this as a detached process; its pid is the "job
id" of every run it holds (`local:<host>:<pid>`), so a second launch sees queued and running
runs as alive. Each run is its own process - `python -m moco3.experiments.job RUN_DIR`, or one
process per GPU through torch.distributed.run for multi-GPU runs - with its threads
(OMP_NUM_THREADS and --threads) and its GPUs (CUDA_VISIBLE_DEVICES; empty
for CPU runs). The runs share the pool's process group. SIGTERM/SIGINT stop it: no new runs
start, running ones get SIGTERM (train checkpoints at the next step boundary and ends as
preempted), and it exits when they have.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from moco3.experiments.start_failure import last_error_line, record_start_failure

MARKER = "moco3.experiments.local_pool"  # in the command line of a live pool (pid-reuse check)
# Written beside PLAN.json once the pool runs (its imports worked, its plan is read): until
# then the launcher watches it, and records in the run folders why a pool that died first did.
STARTED = "started"


@dataclass
class _Active:
    run_id: str
    process: subprocess.Popen[bytes]
    gpus: list[int]
    log: TextIO
    run_dir: str
    log_from: int  # where this job's output starts in its log (the file is appended to)


@dataclass
class Pool:
    """Start queued runs while slots (and GPUs) are free; reap them as they end."""

    runs: list[dict[str, Any]]
    parallel: int
    gpu_ids: list[int] = field(default_factory=list)
    launch_id: str = "local"
    cwd: str = "."
    stopping: bool = False

    def __post_init__(self) -> None:
        self.queue = list(self.runs)
        self.free = list(self.gpu_ids)
        self.active: list[_Active] = []
        self.failed: list[str] = []

    def _command(self, run: dict[str, Any]) -> list[str]:
        job = ["-m", "moco3.experiments.job", run["run_dir"]]
        if run.get("config_sha256"):
            job += ["--config-sha256", run["config_sha256"]]
        if run.get("threads"):
            job += ["--threads", str(run["threads"])]
        if run["gpus"] > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={run['gpus']}", *job]
        return [sys.executable, *job]

    def _start(self, run: dict[str, Any]) -> None:
        gpus = [self.free.pop(0) for _ in range(run["gpus"])]
        env = dict(os.environ)
        if run.get("threads"):
            env["OMP_NUM_THREADS"] = str(run["threads"])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)  # "" = CPU only
        if gpus:
            # Each process of a GPU run sees every core; its share (its loader workers come
            # from it, moco3/workers.py) is the machine's cores over the pool's GPUs.
            share = len(os.sched_getaffinity(0)) // max(1, len(self.gpu_ids))
            env["MOCO3_CPUS_PER_GPU"] = str(max(1, share))
        logs = Path(run["run_dir"]) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{self.launch_id}.log", "a")  # closed when the run is reaped
        # In the pool's process group: whoever kills that group ends every run with it.
        process = subprocess.Popen(self._command(run), cwd=self.cwd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.active.append(_Active(run["run_id"], process, gpus, log, run["run_dir"],
                                   log.tell()))

    def _fits(self, run: dict[str, Any]) -> bool:
        return len(self.active) < self.parallel and len(self.free) >= run["gpus"]

    def step(self) -> None:
        """Reap ended runs, then start what fits."""
        for job in list(self.active):
            code = job.process.poll()
            if code is None:
                continue
            self.active.remove(job)
            self.free.extend(job.gpus)
            job.log.close()
            if code != 0:
                self.failed.append(job.run_id)
                if not self.stopping:  # (a run stopped before it started stays pending)
                    self._record_start_failure(job, code)
        while not self.stopping and self.queue and self._fits(self.queue[0]):
            self._start(self.queue.pop(0))

    def _record_start_failure(self, job: _Active, code: int) -> None:
        """A job that ended before it wrote its status (its code could not even be imported,
        or it was killed at start): its run folder says `failed`, with the error its output
        ends with; that output is already in the run's logs/."""
        log = Path(job.run_dir) / "logs" / f"{self.launch_id}.log"
        try:
            with open(log, errors="replace") as handle:
                handle.seek(job.log_from)
                output = handle.read()
        except OSError:
            output = ""
        reason = last_error_line(output) or (f"killed by signal {-code}" if code < 0
                                             else f"exit status {code}, no output")
        record_start_failure(job.run_dir, f"the job could not start: {reason} (its output: "
                             f"{log})")

    def stop(self, *_: object) -> None:
        """Start nothing more; ask running runs to checkpoint and stop."""
        self.stopping = True
        for job in self.active:
            try:
                job.process.send_signal(signal.SIGTERM)  # torchrun forwards it to its workers
            except ProcessLookupError:
                pass

    def run(self, poll_s: float = 0.5) -> int:
        self.step()
        while self.active or (self.queue and not self.stopping):
            time.sleep(poll_s)
            self.step()
        return 1 if self.failed or self.stopping else 0


def pool_alive(job_id: str) -> bool:
    """Whether `local:<host>:<pid>` is a live pool on this machine."""
    try:
        _, host, pid = job_id.split(":")
    except ValueError:
        return False
    if host != socket.gethostname():
        return False  # another machine's pool: this one cannot tell, and will not wait
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError):
        return False
    return MARKER.encode() in cmdline or b"experiments/launch.py" in cmdline


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m {MARKER} PLAN.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(argv[0]).read_text())
    pool = Pool(plan["runs"], plan["parallel"], plan.get("gpu_ids", []), plan["launch_id"],
                plan.get("cwd", "."))
    signal.signal(signal.SIGTERM, pool.stop)
    signal.signal(signal.SIGINT, pool.stop)
    (Path(argv[0]).parent / STARTED).write_text(str(os.getpid()))
    return pool.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
