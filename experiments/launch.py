"""Launch an ablation: compose, expand the grid, write the run folders, submit, (wait).

    python experiments/launch.py ablation=patch_proj                       # tiny, here
    python experiments/launch.py ablation=batch_size scale=paper launcher=slurm
    python experiments/launch.py ablation=lr scale=small dry_run=true      # grid + cost only
    python experiments/launch.py ablation=my_study conf_dir=~/studies      # your own YAML

Every run's config is composed and validated here, on the login node, and written to
`<runs_root>/<ablation>/<run_id>/config.yaml` with the manifest before anything is
submitted; the job reads that file and nothing else (docs/design.md: why submitit directly and
not Hydra's launcher plugin). A relaunch skips finished runs, leaves active ones alone,
resubmits the rest (they resume from their checkpoints) and refuses, per run, to touch a
finished or started run whose configuration changed.

Extra config directories (your own ablation/, launcher/ ... files): `conf_dir=PATH` on the
command line or MOCO3_CONF_DIR (paths separated by ':'); they join Hydra's search path.
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moco3.config import ConfigError
from moco3.experiments import cost, progress, run_id_args, slurm_jobs
from moco3.experiments.compose_errors import check_composition
from moco3.experiments.grid import GridError, PlannedRun, expand, study_findings
from moco3.experiments.job import RunJob
from moco3.experiments.local_pool import STARTED, pool_alive
from moco3.experiments.rundir import (
    MANIFEST,
    Decision,
    LaunchError,
    ablation_dir,
    check_runs_root,
    config_text,
    decide,
    launch_lock,
    manifest_row,
    read_manifest,
    write_manifest,
    write_run,
)
from moco3.experiments.schema import LAUNCHERS, LaunchConfig, LauncherConfig, register
from moco3.experiments.start_failure import last_error_line, record_start_failure
from moco3.precision import resolve_precision
from moco3.runfolder.cli import invoked_as
from moco3.runfolder.states import RESULTS
from moco3.runfolder.study import write_study

CONF_DIR = Path(__file__).resolve().parent / "conf"
CONF_ENV = "MOCO3_CONF_DIR"
PROFILE_ENV = "MOCO3_CLUSTER_PROFILE"
POOL_START_S = 60.0  # how long a launch waits for its local pool to start (normally < 1 s)


# -- command line ----------------------------------------------------------------------------
def hydra_argv(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """Check the command line and put it in Hydra's terms: `conf_dir=PATH` and
    $MOCO3_CONF_DIR join the search path, `--runs-root DIR` becomes runs_root=DIR, `only=`
    and `show=` are put in Hydra's grammar (experiments/run_id_args.py). Refuses,
    with one sentence, what would otherwise be silently dropped or half done: -m (one study
    per command) and ~key deletions."""
    environ = dict(os.environ) if environ is None else environ
    dirs = [d for d in environ.get(CONF_ENV, "").split(os.pathsep) if d]
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-m", "--multirun"):
            raise LaunchError("-m/--multirun is not supported: launch.py runs one study per "
                              "command (each with its own grid); launch several in turn, e.g. "
                              "for a in lr momentum; do python experiments/launch.py "
                              "ablation=$a; done.")
        if arg.startswith("~"):
            raise LaunchError(f"{arg}: launch.py does not delete keys; set the key to null "
                              f"instead ({arg[1:].split('=')[0]}=null).")
        if arg.startswith("conf_dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.startswith(run_id_args.ONLY):
            rest.append(run_id_args.only_override(arg))
        elif arg.startswith(run_id_args.SHOW):
            rest.append(run_id_args.show_override(arg))
        elif arg == "--runs-root" or arg.startswith("--runs-root="):
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "")
            rest.append(f"runs_root={value}")
        else:
            rest.append(arg)
    if not dirs:
        return rest
    for d in dirs:
        if not Path(d).expanduser().is_dir():
            raise LaunchError(f"conf_dir {d} is not a directory.")
    paths = ",".join(f"file://{Path(d).expanduser().resolve()}" for d in dirs)
    return [*rest, f"hydra.searchpath=[{paths}]"]


def help_overrides(argv: list[str], default: str, help_config: str) -> list[str]:
    """With --help: the help page `help_config` (hydra/help/), naming the command as it was
    invoked (`moco3-launch` installed, `python experiments/launch.py` in a checkout)."""
    if "--help" not in argv and "-h" not in argv:
        return []
    name = invoked_as(default).replace("'", "")
    return [f"hydra/help={help_config}", f"hydra.help.app_name='{name}'"]


def check_top_level_keys(cfg: DictConfig) -> None:
    """`+foo=1` adds a key that nothing reads: refuse it rather than ignore it."""
    known = set(LaunchConfig.__dataclass_fields__) | {"hydra"}
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise LaunchError(f"unknown top-level key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(known - {'hydra'}))}.")


def command_line_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside hydra.main (tests)
        return []


# -- launcher --------------------------------------------------------------------------------
def resolve_launcher(cfg: DictConfig, overrides: list[str], say: Callable[[str], None]
                     ) -> DictConfig:
    """The launcher section with `auto` decided and the cluster profile merged in."""
    launcher = cfg.launcher.copy()
    if launcher.kind not in LAUNCHERS:
        raise LaunchError(f"launcher.kind={launcher.kind!r} is not valid; choose one of "
                          f"{list(LAUNCHERS)}.")
    if launcher.kind == "auto":
        launcher.kind = "slurm" if slurm_jobs.controller_answers() else "local"
        why = ("sbatch is on PATH and the SLURM controller answers" if launcher.kind == "slurm"
               else "no SLURM controller answers here")
        say(f"launcher: {launcher.kind} ({why}; choose with launcher=local|slurm|debug)")
    profile = launcher.profile or os.environ.get(PROFILE_ENV)
    if launcher.kind == "slurm" and profile:
        path = Path(profile).expanduser()
        if not path.is_file():
            raise LaunchError(f"cluster profile {path} (launcher.profile or ${PROFILE_ENV}) "
                              "does not exist.")
        try:
            launcher = OmegaConf.merge(OmegaConf.structured(LauncherConfig), launcher,
                                       OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise LaunchError(f"cluster profile {path}: {str(err).splitlines()[0]}") from None
        # The command line still wins over the profile.
        for override in OverridesParser.create().parse_overrides(overrides):
            key = override.key_or_group
            if key.startswith("launcher.") and not override.is_delete():
                OmegaConf.update(launcher, key[len("launcher."):], override.value(), merge=False)
        launcher.kind = "slurm"
    return launcher


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def local_slots(runs: list[PlannedRun], launcher: DictConfig) -> tuple[int, int, list[int]]:
    """(parallel, threads per CPU run, GPU ids) for the local launcher."""
    cores = launcher.cores or len(os.sched_getaffinity(0))
    need = max((r.resources["gpus"] for r in runs), default=0)
    gpus = visible_gpus() if need else 0
    if need > gpus:
        raise LaunchError(f"runs need {need} GPUs each and this machine has {gpus}: use "
                          "launcher=slurm, or set resources.gpus to at most "
                          f"{gpus}.")
    if launcher.parallel:
        parallel = int(launcher.parallel)
    elif need:
        parallel = max(1, gpus // need)
    else:
        parallel = max(1, min(len(runs), cores))
    threads = max(1, cores // parallel)
    return parallel, threads, list(range(gpus))


# -- checks before anything is written -------------------------------------------------------
def check_data(runs: list[PlannedRun], download_ok: bool,
               missing: Callable[[str], None] | None = None) -> None:
    """Each distinct dataset of the grid exists, and every run's batch fits its training
    set, counted in images (one sentence from moco3 if not). `missing`: called with the
    sentence instead of refusing when a dataset is not there (a dry run on a machine
    without the data still shows the grid and its cost)."""
    from moco3.config import GENERATED_DATASETS, check_batch_fits
    from moco3.data import DatasetNotFoundError, build_dataset

    sizes: dict[tuple, int] = {}
    for run in runs:
        d = run.config.data
        key = (d.name, d.root, d.class_list, d.download, run.config.model.img_size)
        if d.name in GENERATED_DATASETS:
            continue  # generated: its size is data.num_train, checked at compose time
        if key not in sizes:
            try:
                build_dataset(d.name, "val", root=d.root, img_size=run.config.model.img_size,
                              download=bool(d.download and download_ok),
                              class_list=d.class_list)
                sizes[key] = len(build_dataset(
                    d.name, "train", root=d.root, img_size=run.config.model.img_size,
                    download=bool(d.download and download_ok), class_list=d.class_list))
            except DatasetNotFoundError as err:
                sentence = f"{err} (data={d.name}; set MOCO3_DATA or data.root)."
                if missing is None:
                    raise LaunchError(sentence) from None
                missing(f"warning: a launch would be refused here: {sentence}")
                sizes[key] = 0
        if not sizes[key]:
            continue
        try:
            check_batch_fits(run.config, sizes[key])
        except ConfigError as err:
            raise LaunchError(f"run {run.run_id}: {err}") from None


def check_layout(runs: list[PlannedRun], launcher: DictConfig) -> None:
    """Every run's nodes and tasks are possible with this launcher, and its batch splits
    evenly over its processes; refuse with one sentence before anything is written."""
    for r in runs:
        nodes, per_node = slurm_jobs.node_layout(r.resources, launcher)
        if launcher.kind != "slurm":
            # (GPUs this machine lacks are refused by local_slots, dry runs aside.)
            if (r.resources.get("nodes") or 1) > 1:
                raise LaunchError(f"run {r.run_id} asks for resources.nodes="
                                  f"{r.resources['nodes']}: only launcher=slurm spans nodes; "
                                  "use it, or set resources.nodes=1.")
            continue
        tasks = nodes * per_node
        if r.config.train.batch_size % tasks:
            raise LaunchError(f"run {r.run_id}: train.batch_size={r.config.train.batch_size} "
                              f"does not split evenly over its {tasks} processes; use a "
                              f"multiple of {tasks}.")


# -- dry run ---------------------------------------------------------------------------------
def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def describe(runs: list[PlannedRun], decisions: dict[str, Decision], launcher: DictConfig
             ) -> str:
    """The grid with resources, what a launch would do with each run, and the cost."""
    names = list(dict.fromkeys(k for r in runs for k in r.factors))
    header = ["run", *names, "seed", "gpus", "nodes", "batch", "epochs", "GPU-h", "action"]
    rows = [header]
    total_gpu = total_cpu = 0.0
    for r in runs:
        gpu_h = cost.gpu_hours(r.config)
        total_gpu += gpu_h
        gpus = r.resources["gpus"]
        if gpus == 0:
            # The rate of the precision `auto` picks on this CPU (bf16 is ~2x fp32 where the
            # CPU has native bf16 instructions): the runs train here when launched locally.
            total_cpu += cost.cpu_core_hours(r.config, resolve_precision(
                r.config.train.precision, torch.device("cpu")))
        d = decisions[r.run_id]
        rows.append([r.run_id, *(r.factors.get(n, "-") for n in names), str(r.seed), str(gpus),
                     str(slurm_jobs.node_layout(r.resources, launcher)[0]),
                     str(r.config.train.batch_size), str(r.config.train.epochs), _hours(gpu_h),
                     d.reason if d.action == "submit" else f"{d.action}: {d.reason}"[:60]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.append(f"{len(runs)} runs; about {_hours(total_gpu)} GPU-hours in total (the paper's "
                 "ViT-B/16 100 epochs = 24 h on 128 GPUs, scaled by model FLOPs, epochs and "
                 "images; linear probe included).")
    if total_cpu:
        cores = launcher.cores or len(os.sched_getaffinity(0))
        lines.append(f"On CPUs: about {_hours(total_cpu)} core-hours, {_hours(total_cpu / cores)} "
                     f"h on this machine's {cores} cores.")
    lines.append(f"launcher: {launcher.kind}; dry run: nothing written, nothing submitted.")
    return "\n".join(lines)


# -- the study record ------------------------------------------------------------------------
def _compose_paper(ablation: str) -> DictConfig:
    """The study composed at scale=paper with the same config search path (conf_dir), and
    nothing else from the command line: the cost of the paper's own setting."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"ablation={ablation}", "scale=paper"]
    try:
        hydra_overrides = list(HydraConfig.get().overrides.hydra)
    except ValueError:  # composed outside hydra.main (tests): $MOCO3_CONF_DIR only
        hydra_overrides = hydra_argv([])
    overrides += [o for o in hydra_overrides if o.startswith("hydra.searchpath")]
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=overrides)


def paper_cells(ablation: str, scale: str, runs: list[PlannedRun]
                ) -> tuple[list[dict[str, Any]], str]:
    """GPU-hours of one run of each cell at the study's paper scale (the dry run's cost
    model), and why they are missing when they are."""
    if scale != "paper":
        try:
            runs = expand(_compose_paper(ablation), ablation, "paper")
        except Exception as err:  # noqa: BLE001 - a cost estimate never blocks a launch
            return [], f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    cells: dict[str, dict[str, Any]] = {}
    for r in runs:
        key = ",".join(f"{k}={v}" for k, v in r.factors.items())
        cells.setdefault(key, {"factors": dict(r.factors),
                               "gpu_hours": round(cost.gpu_hours(r.config), 4)})
    return list(cells.values()), ""


# -- liveness --------------------------------------------------------------------------------
class Liveness:
    """Whether a job id recorded by an earlier launch still runs (or waits in a queue)."""

    def __init__(self) -> None:
        self._queue: dict[str, str] | None = None
        self._asked = False

    def refresh(self) -> None:
        self._asked = False

    def __call__(self, job_id: str) -> bool:
        if job_id.startswith(("local:", "debug:")):
            return pool_alive(job_id)
        if not self._asked:
            self._queue, self._asked = slurm_jobs.queue_states(), True
        if self._queue is None:
            if shutil.which("squeue") is None:
                return False  # a SLURM job of another machine: it cannot be running here
            raise LaunchError(f"squeue did not answer, so whether job {job_id} still runs is "
                              "unknown; launch again when SLURM answers.")
        state = self._queue.get(job_id)
        return state is not None and state not in slurm_jobs.ENDED


# -- the launch ------------------------------------------------------------------------------
class Launch:
    """One invocation: plan, write and submit under the lock, then (optionally) wait."""

    def __init__(self, cfg: DictConfig, ablation: str, scale: str, overrides: list[str],
                 say: Callable[[str], None] = print) -> None:
        self.cfg, self.ablation, self.scale, self.say = cfg, ablation, scale, say
        self.overrides = overrides
        self.dir = ablation_dir(cfg.runs_root, ablation)
        self.launch_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.alive = Liveness()

    def plan(self) -> list[PlannedRun]:
        runs = expand(self.cfg, self.ablation, self.scale)
        if self.cfg.only:
            runs = [r for r in runs if any(s in r.run_id for s in self.cfg.only)]
            if not runs:
                raise LaunchError(f"only={list(self.cfg.only)} matches no run of ablation "
                                  f"{self.ablation}.")
        return runs

    def decisions(self, runs: list[PlannedRun]) -> dict[str, Decision]:
        manifest = read_manifest(self.dir / MANIFEST)
        out = {}
        for run in runs:
            jobs = manifest.get(run.run_id, {}).get("job_ids") or []
            out[run.run_id] = decide(run, self.dir / run.run_id, jobs[-1] if jobs else None,
                                     self.alive, retry_failed=bool(self.cfg.retry_failed))
        return out

    def show(self, runs: list[PlannedRun]) -> str:
        """The config.yaml that run `cfg.show` (its id, or a text in exactly one id) would
        get, byte for byte; nothing is written."""
        wanted = str(self.cfg.show)
        match = [r for r in runs if r.run_id == wanted] or [r for r in runs
                                                            if wanted in r.run_id]
        if len(match) != 1:
            raise LaunchError(
                f"show={wanted} {'matches no run' if not match else 'matches several runs'} "
                f"of ablation {self.ablation} at scale {self.scale}; its run ids: "
                f"{', '.join(r.run_id for r in (match or runs))}.")
        return config_text(match[0].config)

    def run(self) -> int:
        runs = self.plan()
        if self.cfg.show:
            sys.stdout.write(self.show(runs))
            return 0
        launcher = resolve_launcher(self.cfg, self.overrides, self.say)
        check_data(runs, download_ok=not self.cfg.dry_run,
                   missing=self.say if self.cfg.dry_run else None)
        check_layout(runs, launcher)
        if self.cfg.dry_run:
            self.say(describe(runs, self.decisions(runs), launcher))
            return 0
        if launcher.kind == "local":
            local_slots(runs, launcher)  # refuses missing GPUs before anything is written
        with launch_lock(self.dir, self.ablation):
            self.alive.refresh()
            decisions = self.decisions(runs)
            self._announce(runs, decisions)
            todo = [r for r in runs if decisions[r.run_id].action == "submit"]
            slots = (1, 1, [])
            if launcher.kind == "local" and todo:
                slots = local_slots(todo, launcher)
                self.say(f"local: {len(todo)} run(s), {slots[0]} at a time"
                         + (f", {slots[1]} thread(s) each" if not slots[2] else ""))
            manifest = self._write(runs, todo, decisions, launcher)
            self._write_study(runs)
            if todo:
                self._record(manifest, self._submit(todo, launcher, slots, manifest))
            else:
                self.say("nothing to submit.")
        if todo and launcher.kind == "debug":
            self._run_in_process(todo)
        elif self.cfg.wait and todo:
            self._wait(runs, launcher)
        return self._report(runs, decisions)

    def _announce(self, runs: list[PlannedRun], decisions: dict[str, Decision]) -> None:
        for r in runs:
            if decisions[r.run_id].action == "refuse":
                self.say(f"refused: {decisions[r.run_id].reason}")
        skipped = [r for r in runs if decisions[r.run_id].action == "skip"]
        if skipped:
            self.say(f"skipped {len(skipped)} run(s): " + "; ".join(
                f"{r.run_id} ({decisions[r.run_id].reason})" for r in skipped))

    def _write(self, runs: list[PlannedRun], todo: list[PlannedRun],
               decisions: dict[str, Decision], launcher: DictConfig
               ) -> dict[str, dict[str, Any]]:
        """config.yaml (only for a new run, or one no job has trained whose config changed)
        + pending status of each run to submit, then the manifest with each config's
        sha256, which the job checks before it reads the file."""
        manifest = read_manifest(self.dir / MANIFEST)
        shas = {r.run_id: write_run(self.dir / r.run_id, r.config,
                                    rewrite=decisions[r.run_id].rewrite) for r in todo}
        for r in runs:
            if r.run_id not in manifest or r.run_id in shas:
                manifest[r.run_id] = manifest_row(r, self.ablation, manifest.get(r.run_id),
                                                  launcher.kind, shas.get(r.run_id))
        write_manifest(self.dir / MANIFEST, manifest)
        return manifest

    def _write_study(self, runs: list[PlannedRun]) -> None:
        """study.json: the findings the report judges and the paper-scale cost per cell."""
        findings = study_findings(self.cfg.ablation, self.ablation)
        # The paper-scale cost prices the findings' seeds: only worth composing for some.
        cells, problem = paper_cells(self.ablation, self.scale, runs) if findings else ([], "")
        if problem:
            self.say(f"warning: no paper-scale cost for the report's power table ({problem}).")
        write_study(self.dir, self.ablation, self.scale, str(self.cfg.ablation.reproduces or ""),
                    findings, cells, str(self.cfg.ablation.get("description") or ""))

    def _record(self, manifest: dict[str, dict[str, Any]], job_ids: dict[str, str]) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for run_id, job_id in job_ids.items():
            manifest[run_id]["job_ids"].append(job_id)
            manifest[run_id]["submitted"] = now
        write_manifest(self.dir / MANIFEST, manifest)

    # -- executors ---------------------------------------------------------------------------
    def _submit(self, todo: list[PlannedRun], launcher: DictConfig,
                slots: tuple[int, int, list[int]], manifest: dict[str, dict[str, Any]]
                ) -> dict[str, str]:
        """Hand the runs to the executor; run id -> job id."""
        jobs = {r.run_id: RunJob(self.dir / r.run_id, manifest[r.run_id]["config_sha256"],
                                 self._threads(r, launcher, slots[1])) for r in todo}
        if launcher.kind == "debug":  # runs after the lock is released, in this process
            self.debug_jobs = jobs
            return {r.run_id: f"debug:{socket.gethostname()}:{os.getpid()}" for r in todo}
        if launcher.kind == "local":
            return self._start_pool(todo, jobs, slots[0], slots[2])
        return self._submit_slurm(todo, jobs, launcher)

    @staticmethod
    def _threads(run: PlannedRun, launcher: DictConfig, local_threads: int) -> int | None:
        """Torch threads of a CPU run: its share of this machine (local), its SLURM cores;
        None for GPU runs (torch's default). A resumed run keeps the count it started with."""
        if run.resources["gpus"]:
            return None
        if launcher.kind == "slurm":
            return int(run.resources["cpus"] or launcher.cpus_per_task)
        return local_threads

    def _start_pool(self, todo: list[PlannedRun], jobs: dict[str, RunJob], parallel: int,
                    gpu_ids: list[int]) -> dict[str, str]:
        folder = self.dir / ".local" / self.launch_id
        folder.mkdir(parents=True, exist_ok=True)
        plan = {"parallel": parallel, "gpu_ids": gpu_ids, "launch_id": self.launch_id,
                "cwd": os.getcwd(),
                "runs": [{"run_id": r.run_id, "run_dir": jobs[r.run_id].run_dir,
                          "gpus": r.resources["gpus"], "threads": jobs[r.run_id].threads,
                          "config_sha256": jobs[r.run_id].config_sha256} for r in todo]}
        (folder / "plan.json").write_text(json.dumps(plan, indent=1))
        with open(folder / "pool.log", "a") as log:
            # Its own session: the runs outlive this launcher (wait=false) and a Ctrl-C in
            # the terminal reaches only the launcher, which asks the pool to stop them at
            # a step boundary. The runs share the pool's process group, so killing that
            # group ends all of them.
            self.pool = subprocess.Popen(
                [sys.executable, "-m", "moco3.experiments.local_pool", str(folder / "plan.json")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._await_pool(folder, [jobs[r.run_id].run_dir for r in todo])
        job_id = f"local:{socket.gethostname()}:{self.pool.pid}"
        return {r.run_id: job_id for r in todo}

    def _await_pool(self, folder: Path, run_dirs: list[str]) -> None:
        """Until the pool runs (it writes STARTED beside its plan) or has died. One that died
        first - its own imports failed, say - started no job, so nothing would say why in
        the run folders: each gets `failed` with the pool's error, and its output in logs/."""
        deadline = time.monotonic() + POOL_START_S
        while not (folder / STARTED).exists() and time.monotonic() < deadline:
            if self.pool.poll() is not None:
                output = (folder / "pool.log").read_text(errors="replace")
                reason = last_error_line(output) or f"exit status {self.pool.returncode}"
                for run_dir in run_dirs:
                    record_start_failure(run_dir, f"the local pool could not start: {reason} "
                                         f"(its output: {folder / 'pool.log'})", output,
                                         f"{self.launch_id}.log")
                self.say(f"local: the pool could not start: {reason}; each run's status.json "
                         "and logs/ say so")
                return
            time.sleep(0.05)

    def _submit_slurm(self, todo: list[PlannedRun], jobs: dict[str, RunJob],
                      launcher: DictConfig) -> dict[str, str]:
        folder = self.dir / ".submitit" / self.launch_id
        groups: dict[tuple[Any, ...], list[PlannedRun]] = {}
        for r in todo:
            groups.setdefault(r.resource_key(), []).append(r)
        job_ids: dict[str, str] = {}
        for group in groups.values():
            params = slurm_jobs.job_parameters(group[0].resources, launcher,
                                               f"{launcher.job_name}-{self.ablation}")
            ids = slurm_jobs.submit_group(folder, [jobs[r.run_id] for r in group], params,
                                          launcher)
            job_ids.update({r.run_id: i for r, i in zip(group, ids, strict=True)})
            self.say(f"slurm: submitted {len(group)} run(s) as "
                     + (f"array {ids[0].split('_')[0]}" if len(ids) > 1 else f"job {ids[0]}")
                     + f" ({params.get('nodes')} node(s), {group[0].resources['gpus']} GPU(s) "
                     f"per run, {params['time']} min)")
        return job_ids

    def _run_in_process(self, todo: list[PlannedRun]) -> None:
        for r in todo:
            self.say(f"debug: running {r.run_id} in this process")
            try:
                self.debug_jobs[r.run_id]()
            except Exception as err:  # recorded in its run folder; go on with the next
                self.say(f"debug: {r.run_id} failed: {err}")

    # -- waiting -----------------------------------------------------------------------------
    def _wait(self, runs: list[PlannedRun], launcher: DictConfig) -> None:
        """The live table until every run has ended. Ctrl-C or SIGTERM: local runs stop at
        their next step boundary with a checkpoint (state preempted); SLURM jobs go on."""
        ids = [r.run_id for r in runs]
        live = sys.stdout.isatty()
        shown: dict[str, str] = {}
        drawn = 0
        poll = launcher.poll_s or (2.0 if launcher.kind == "local" else 15.0)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while True:
                ended = self._ended(runs, launcher)
                rows = progress.read_rows(self.dir, ids)
                if live:
                    table = progress.format_table(rows)
                    if drawn:
                        sys.stdout.write(f"\x1b[{drawn}F\x1b[J")
                    sys.stdout.write(table + "\n")
                    sys.stdout.flush()
                    drawn = table.count("\n") + 1
                else:
                    for r in rows:
                        if shown.get(r.run_id) != r.state:
                            shown[r.run_id] = r.state
                            self.say(f"[{time.strftime('%H:%M:%S')}] {r.run_id}: {r.state}")
                if ended:
                    return
                time.sleep(poll)
        except KeyboardInterrupt:
            again = resume_command(TYPED_ARGS if TYPED_ARGS is not None else self.overrides)
            if launcher.kind == "local":
                self.pool.send_signal(signal.SIGTERM)  # each run checkpoints and stops
                self.pool.wait()
                self.say("interrupted: the running runs stopped at a step boundary with a "
                         f"checkpoint (state preempted); resume them with: {again}")
            else:
                self.say("stopped waiting; the jobs go on (python experiments/status.py "
                         f"ablation={self.ablation}).")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _ended(self, runs: list[PlannedRun], launcher: DictConfig) -> bool:
        if launcher.kind == "local":
            return self.pool.poll() is not None
        manifest = read_manifest(self.dir / MANIFEST)
        self.alive.refresh()
        try:
            return not any(self.alive(manifest[r.run_id]["job_ids"][-1]) for r in runs
                           if manifest.get(r.run_id, {}).get("job_ids"))
        except LaunchError:
            return False  # squeue did not answer this time: keep waiting

    def _report(self, runs: list[PlannedRun], decisions: dict[str, Decision]) -> int:
        rows = progress.read_rows(self.dir, [r.run_id for r in runs])
        if self.cfg.wait or not any(d.action == "submit" for d in decisions.values()):
            self.say(progress.format_table(rows))
        refused = any(d.action == "refuse" for d in decisions.values())
        if not self.cfg.wait:
            return 1 if refused else 0
        unfinished = [r for r in rows if r.state not in RESULTS]
        for r in unfinished:
            self.say(f"{r.run_id}: {r.state}" + (f" ({r.error})" if r.error else "")
                     + f"; its log is in {self.dir / r.run_id / 'logs'}")
        return 1 if refused or unfinished else 0


TYPED_ARGS: list[str] | None = None  # the command line as typed (conf_dir= included)


def resume_command(args: list[str]) -> str:
    """The command that resumes this launch from any directory: relative paths on its
    command line (runs_root=runs) mean the directory it was launched from."""
    return (f"cd {shlex.quote(os.getcwd())} && {shlex.quote(sys.executable)} "
            f"{shlex.quote(str(Path(__file__).resolve()))} " + shlex.join(args)).rstrip()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM to a waiting launch means what Ctrl-C means."""
    raise KeyboardInterrupt


def launch(cfg: DictConfig, ablation: str, scale: str, overrides: list[str] | None = None,
           say: Callable[[str], None] = print) -> int:
    """Run one launch; errors that refuse the whole launch come out as one sentence."""
    try:
        check_top_level_keys(cfg)
        check_runs_root(Path(cfg.runs_root))
        return Launch(cfg, ablation, scale, overrides or [], say).run()
    except (GridError, LaunchError, ConfigError) as err:
        print(f"launch.py: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full runs root, found while writing
        print(f"launch.py: error: cannot write {err.filename or cfg.runs_root}: "
              f"{err.strerror or err}; choose another runs_root= or free some space.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


register()


@hydra.main(version_base=None, config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    choices = HydraConfig.get().runtime.choices
    # One study per command (-m is refused before Hydra sees it), so exiting here drops
    # nothing.
    sys.exit(launch(cfg, choices["ablation"], choices["scale"], command_line_overrides()))


def main() -> None:
    """`python experiments/launch.py ...` and the installed `moco3-launch`."""
    global TYPED_ARGS
    TYPED_ARGS = list(sys.argv[1:])
    try:
        argv = ["--help" if a == "-h" else a for a in sys.argv[1:]]
        sys.argv[1:] = hydra_argv(argv) + help_overrides(argv, "python experiments/launch.py",
                                                          "launch")
    except LaunchError as err:
        print(f"launch.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = check_composition(sys.argv[1:], "launch.py")
    hydra_main()


if __name__ == "__main__":
    main()
