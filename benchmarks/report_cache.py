"""How long the report takes for a large study: 1,000 runs x 10,000 metrics rows.

    python benchmarks/report_cache.py [--runs 1000] [--rows 10000] [--repeats 3]
                                      [--dir DIR] [--keep] [--no-pdf]

Writes that many run folders (every ablation of the paper, seeds spread over the grid;
about 4 MB of metrics.jsonl per run) into a temporary folder, then times
``python analysis/report.py`` on it as a user would run it (a fresh process, imports
included), each case ``--repeats`` times, keeping the fastest (other processes on a shared
machine only ever add time):

* cold        -- no parse cache and no figures: every run folder is read and every figure
  drawn (the metrics files are in the OS page cache: they were just written);
* cached      -- nothing changed: the parse cache and the figure digests are reused;
* incremental -- 1 % of the runs (ones still running) logged a new kNN evaluation since:
  only those are read again, and only the figures whose data changed are drawn again.

It prints the CPU (model, family, vector width, usable cores), and beside each time the
CPU seconds the report used (its drawing processes included: on a machine shared with
other work, wall time above CPU time / cores is time spent waiting for a core), the load
average, the stage timings of report.py and the peak resident memory of a report process;
at the full size, each figure against its target (cold <= 10 s, cached <= 2 s,
incremental <= 3 s, memory < 4 GB).

The data look like real runs: kNN rows every 100 steps with dips, probe rows at the end,
gradient norms with occasional spikes, 3 % of the runs still running (no summary.json, a
truncated last line), 2 % diverged (a last train row with non-finite norms and loss, a
grad_spike event per group with a non-finite value, a diverged event), 10 % resumed once
by an earlier writer (a chunk of steps repeated). Train rows are built from a few
templates (writing 10 million distinct JSON rows would take minutes and measure the
generator, not the report); every run gets its own kNN, probe and summary numbers.
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import argparse
import itertools
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moco3.analysis.reference import REFERENCES
from moco3.runfolder.instability import find_dips, max_dip

KNN_EVERY = 100
PROBE_EPOCHS = 10
REPORT = Path(__file__).resolve().parent.parent / "analysis" / "report.py"


def grid() -> list[tuple[str, dict[str, str]]]:
    """(ablation, factors) cells: every paper ablation's levels (optimizer as in the paper)."""
    cells: list[tuple[str, dict[str, str]]] = []
    for name, ref in REFERENCES.items():
        if name == "optimizer":
            cells += [(name, {"optimizer": "adamw", "lr": "1.0e-4"})]
            cells += [(name, {"optimizer": "lamb", "lr": lr}) for lr in ("5e-4", "6e-4", "8e-4")]
            continue
        if name == "negatives":
            ks = ("256", "1024", "4096", "16384", "65536")
            cells += [(name, {"mechanism": m, "K": k}) for m in ref.levels["mechanism"]
                      for k in ks]
            continue
        names = list(ref.levels)
        for values in itertools.product(*(ref.levels[n] for n in names)):
            cells.append((name, dict(zip(names, values, strict=True))))
    return cells


def train_template(num_train: int, learned: bool, spiky: bool, seed: int) -> list[bytes]:
    """Train lines (bytes, with newline) for steps 0..num_train-1 in KNN_EVERY-step chunks."""
    rng = random.Random(seed)
    lines = []
    for step in range(num_train):
        first = rng.lognormvariate(0.0, 0.15)
        last = rng.lognormvariate(-0.5, 0.15)
        if spiky and step % 1500 == 700:
            first *= 12.0
        if spiky and step % 1500 == 730:  # tens of iterations later in the last layers
            last *= 8.0
        row = {"kind": "train", "step": step, "epoch": step / 1000, "images_seen": 256 * step,
               "loss": 9.0 * math.exp(-step / 3000) + 2.0 + rng.random() * 0.05,
               "lr": 1.5e-4 * min(1.0, step / 400), "wd": 0.1, "momentum": 0.99, "tau": 0.2,
               "grad_norm": first + last + 1.0,
               "grad_norm_patch_embed": first if learned else None,
               "grad_norm_first_block": first * 0.8, "grad_norm_last_block": last,
               "grad_norm_heads": 0.5 + rng.random() * 0.1, "sec_per_step": 0.21,
               "img_per_sec": 1219.0 + rng.random(), "peak_mem_mb": 20480.0}
        lines.append((json.dumps(row) + "\n").encode())
    return [b"".join(lines[i:i + KNN_EVERY]) for i in range(0, num_train, KNN_EVERY)]


def knn_curve(rng: random.Random, points: int, unstable: bool) -> list[float]:
    final = rng.uniform(30, 60)
    curve = []
    for i in range(points):
        value = final * (1 - math.exp(-4 * (i + 1) / points)) + rng.gauss(0, 0.4)
        if unstable and i % 25 == 12:
            value -= rng.uniform(4, 10)  # a dip, recovered at the next evaluation
        curve.append(round(value, 3))
    return curve


def write_runs(root: Path, num_runs: int, rows: int, seed: int = 0) -> int:
    """Write ``num_runs`` run folders of about ``rows`` metrics rows; returns bytes written."""
    rng = random.Random(seed)
    num_knn = max(1, rows // (KNN_EVERY + 1))
    num_train = rows - num_knn - PROBE_EPOCHS
    templates = {(learned, spiky): train_template(num_train, learned, spiky, seed)
                 for learned in (False, True) for spiky in (False, True)}
    cells = grid()
    spikes = sum(1 for step in range(num_train) if step % 1500 == 700)  # as in the templates
    total = 0
    for index in range(num_runs):
        ablation, factors = cells[index % len(cells)]
        run_seed = index // len(cells)
        label = ",".join(f"{k}={v}" for k, v in factors.items()) or "baseline"
        run = root / ablation / label / f"seed={run_seed}"
        run.mkdir(parents=True, exist_ok=True)
        # Deterministic mix, so that even a small study has each kind of run: 3 % still
        # running (a truncated last line), 2 % diverged, 10 % resumed once.
        state = ("running" if index % 33 == 5 else "diverged" if index % 50 == 7
                 else "done")
        learned = factors.get("patch_embed") == "learned"
        spiky = learned or rng.random() < 0.3
        chunks = templates[(learned, spiky)]
        curve = knn_curve(rng, len(chunks), unstable=spiky)
        stop = len(chunks) if state == "done" else rng.randrange(2, len(chunks))
        resumed_at = stop // 2 if index % 10 == 3 else -1
        parts = []
        for i in range(stop):
            parts.append(chunks[i])
            step = (i + 1) * KNN_EVERY - 1
            parts.append((json.dumps({"kind": "knn", "step": step, "epoch": step / 1000,
                                      "images_seen": 256 * step, "knn_top1": curve[i]})
                          + "\n").encode())
            if i == resumed_at:  # an earlier writer's resume: the last chunk again
                parts.append(json.dumps({"kind": "event", "step": step - KNN_EVERY + 1,
                                         "event": "resumed"}).encode() + b"\n")
                parts.append(chunks[i])
        last_step = stop * KNN_EVERY - 1
        linear = None
        if state == "done":
            linear = round(curve[-1] + rng.uniform(5, 10), 2)
            for epoch in range(PROBE_EPOCHS):
                top1 = round(linear * (1 - math.exp(-(epoch + 1) / 3)), 3)
                parts.append((json.dumps({"kind": "probe", "step": last_step,
                                          "epoch": last_step / 1000,
                                          "images_seen": 256 * last_step,
                                          "probe_epoch": epoch, "probe_loss": 1.0,
                                          "probe_top1": top1}) + "\n").encode())
        if state == "diverged":  # as the job writes it: non-finite norms and loss
            last_step += 1
            groups = ["first_block", "last_block", "heads"] + (["patch_embed"] if learned
                                                               else [])
            parts.append(json.dumps({
                "kind": "train", "step": last_step, "epoch": last_step / 1000,
                "images_seen": 256 * last_step, "loss": "nan", "lr": 1.5e-4, "grad_norm": "nan",
                **{f"grad_norm_{g}": "inf" if g == "first_block" else "nan" for g in groups},
            }).encode() + b"\n")
            for group in groups:
                parts.append(json.dumps({"kind": "event", "step": last_step,
                                         "event": "grad_spike", "group": group,
                                         "value": "inf" if group == "first_block" else "nan",
                                         "reference": 1.0, "threshold": 4.0}).encode()
                             + b"\n")
            parts.append(json.dumps({"kind": "event", "step": last_step, "event": "diverged",
                                     "value": "nan"}).encode() + b"\n")
        if state == "running":
            parts.append(b'{"kind": "train", "step": 99999, "lo')  # cut mid-write
        data = b"".join(parts)
        (run / "metrics.jsonl").write_bytes(data)
        total += len(data)
        meta = {"ablation": ablation, "run_id": f"{label}/seed={run_seed}",
                "factors": factors, "seed": run_seed, "scale": "small",
                "config_hash": f"{index:08x}"}
        (run / "config.yaml").write_text(json.dumps({"meta": meta, "train": {"epochs": 10}}))
        (run / "status.json").write_text(json.dumps(
            {"state": state, "step": last_step, "total_steps": num_train, "job_id": str(index),
             "host": "node", "started": "t0", "updated": "t1", "error": None}))
        if state != "running":
            done_curve = curve[:stop]
            (run / "summary.json").write_text(json.dumps({
                "state": state, "step": last_step, "knn_top1": done_curve[-1],
                "knn_top1_max": max(done_curve), "linear_top1": linear,
                "num_knn_dips": len(find_dips(done_curve)), "max_knn_dip": max_dip(done_curve),
                "num_spikes_first": spikes if spiky else 0,
                "num_spikes_last": spikes if spiky else 0,
                "diverged_step": last_step if state == "diverged" else None,
                "final_loss": 2.1, "train_seconds": 3600.0}))
    return total


TARGETS = {"cold": 10.0, "cached": 2.0, "incremental": 3.0}  # seconds, for 1,000 x 10,000
MEMORY_TARGET_GB = 4.0


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux) and how many cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        info: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        # Virtual machines often name only the vendor line ("AMD EPYC"): add the family,
        # model and vector width, which tell two such CPUs apart.
        flags = info.get("flags", "").split()
        vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        name = (f"{info.get('model name', name)} (family {info.get('cpu family', '?')}, "
                f"model {info.get('model', '?')}, {vector})")
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return f"{name}, {cores} core(s)"


def time_report(root: Path, out: Path, *extra: str) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak resident memory in GB, stdout) of one
    ``report.py`` process; CPU time includes its drawing processes."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(REPORT), "--runs-root", str(root),
                                 "--out", str(out), "--timings", *extra],
                                stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak memory
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"report.py failed ({proc.returncode}): "
                             f"{stderr.read().decode().strip()}")
        cpu = usage.ru_utime + usage.ru_stime
        return elapsed, cpu, usage.ru_maxrss / 2**20, stdout.read().decode().strip()


def _summary(output: str) -> str:
    """"N figure(s) drawn, M unchanged" and the stage timings from report.py's output."""
    lines = output.splitlines()
    figures = lines[0].split(" ablation(s), ")[-1].split(";")[0].rstrip(")")
    return f"{figures}; {lines[-1]}"


def move_on(runs: list[Path], step_offset: int) -> None:
    """Runs still running log one more kNN evaluation (their cut last line got finished)."""
    for run in runs:
        data = (run / "metrics.jsonl").read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # the cut line got finished ...
        last = json.loads(data[data.rstrip(b"\n").rfind(b"\n") + 1:])
        step = last["step"] + 1 + step_offset
        data += (json.dumps({"kind": "knn", "step": step, "epoch": step / 1000,
                             "images_seen": 256 * step, "knn_top1": 1.0}) + "\n").encode()
        (run / "metrics.jsonl").write_bytes(data)  # ... and a new evaluation followed


def _load() -> str:
    try:
        return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load ?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/report_cache.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10_000, help="metrics rows per run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="builds per case; the fastest is kept (default: 3)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated runs")
    parser.add_argument("--no-pdf", action="store_true",
                        help="PNG figures only (report.py --no-pdf; the test suite's small run)")
    args = parser.parse_args(argv)
    extra = ("--no-pdf",) if args.no_pdf else ()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="moco3-bench-"))
    root, out = base / "runs", base / "report"
    repeats = max(1, args.repeats)
    print(f"CPU: {cpu_name()}; {_load()} (other processes slow every figure below)")
    try:
        start = time.perf_counter()
        size = write_runs(root, args.runs, args.rows)
        print(f"generated {args.runs} runs x ~{args.rows} rows ({size / 2**30:.2f} GiB of "
              f"metrics.jsonl) in {time.perf_counter() - start:.1f} s under {root}")
        results: dict[str, tuple[float, float, float, str, str]] = {}

        def measure(case: str, label: str, before=None) -> None:
            for attempt in range(repeats):
                if before is not None:
                    before(attempt)
                elapsed, cpu, peak, output = time_report(root, out, *extra)
                best = results.get(case)
                peak = max(peak, best[2] if best else 0.0)
                if best is None or elapsed < best[0]:
                    results[case] = (elapsed, cpu, peak, output, _load())
                else:
                    results[case] = (*best[:2], peak, *best[3:])
            elapsed, cpu, peak, output, load = results[case]
            print(f"{label:34s} {elapsed:6.2f} s wall, {cpu:6.2f} s CPU, peak {peak:.2f} GB "
                  f"({load}) | {_summary(output)}", flush=True)

        def forget(_attempt: int) -> None:  # no parse cache, no figures: a first build
            shutil.rmtree(root / ".cache", ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)

        measure("cold", "cold (no cache, no figures)", forget)
        measure("cached", "cached (nothing changed)")
        # A study in progress: 1 % of the runs (some still running) log a new kNN
        # evaluation; their ablations' kNN figures change and are drawn again.
        running = sorted(p.parent for p in root.glob("*/*/seed=*/status.json")
                         if json.loads(p.read_text())["state"] == "running")
        changed = running[: max(1, args.runs // 100)]
        measure("incremental", f"incremental ({len(changed)} runs moved on)",
                lambda attempt: move_on(changed, attempt))
        peak = max(r[2] for r in results.values())
        print(f"best of {repeats}; files in the OS page cache (just written); "
              f"peak memory {peak:.2f} GB of one report process")
        if (args.runs, args.rows) == (1000, 10_000):
            verdicts = [f"{case} {results[case][0]:.2f} s (target <= {limit:g} s: "
                        f"{'met' if results[case][0] <= limit else 'MISSED'})"
                        for case, limit in TARGETS.items()]
            verdicts.append(f"peak memory {peak:.2f} GB (target < {MEMORY_TARGET_GB:g} GB: "
                            f"{'met' if peak < MEMORY_TARGET_GB else 'MISSED'})")
            print("targets: " + "; ".join(verdicts))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
