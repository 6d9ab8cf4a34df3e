"""The schema of what `launch.py` composes: a run configuration plus where and how to run it.

The run sections (model, moco, data, optim, train, probe, meta, seed) are
`moco3.config.RunConfig` itself; this file adds the launch-only sections - `launcher` (the
executor and the cluster profile), `resources` (what one run needs), `ablation` (the study's
grid) - and the top-level switches. Registered in Hydra's ConfigStore as `launch_schema`,
the first entry of conf/config.yaml's defaults, so a mistyped key anywhere fails at compose
time with Hydra's "Key 'x' not in 'Y'".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from moco3.config import RunConfig
from moco3.recipes import r50_recipe

SCALES = ("tiny", "mini", "small", "paper")
LAUNCHERS = ("auto", "local", "slurm", "debug")


@dataclass
class LauncherConfig:
    """Where runs go. The slurm fields are the cluster profile (edit launcher/slurm.yaml once,
    or point MOCO3_CLUSTER_PROFILE / launcher.profile at a YAML file of these fields)."""

    kind: str = "auto"  # auto: slurm when `sbatch` is on PATH and the controller answers
    # -- local -------------------------------------------------------------------------
    parallel: int | None = None  # runs at once; None: GPUs // gpus per run, or min(runs, cores)
    cores: int | None = None  # cores to share among CPU runs; None: all this process may use
    poll_s: float | None = None  # progress refresh; None: 2 s local, 15 s on SLURM (squeue)
    # -- slurm (the cluster profile) ---------------------------------------------------------
    profile: str | None = None  # a YAML file of launcher fields merged over this section
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    gpus_per_node: int = 8  # GPUs of one node: a run with more spans several nodes
    cpus_per_task: int = 10  # one task per GPU (or one task for a CPU run)
    mem_gb: float | None = None  # per node; None: the partition's default
    timeout_min: int = 4320  # wall-time limit of one job; longer runs requeue and resume
    array_parallelism: int = 256  # array tasks running at once
    max_num_timeout: int = 30  # requeues after a time-out or preemption (each USR2 counts)
    signal_delay_s: int = 120  # USR2 this long before the time limit: time to checkpoint
    job_name: str = "moco3"
    setup: list[str] = field(default_factory=list)  # shell lines before the job (module load)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # any other sbatch flag
    python: str | None = None  # interpreter on the nodes; None: this one


@dataclass
class ResourcesConfig:
    """What one run needs; an ablation level may change it (e.g. more GPUs for larger batches)."""

    gpus: int = 0  # in total; 0 = a CPU run. Multi-GPU runs get one process per GPU.
    # SLURM nodes; None: ceil(gpus / launcher.gpus_per_node), or 1 for a CPU run. A CPU run on
    # N nodes is N processes (one task per node, gloo) sharing train.batch_size equally.
    nodes: int | None = None
    cpus: int | None = None  # cores of a CPU run on SLURM; None: launcher.cpus_per_task
    timeout_min: int | None = None  # None: launcher.timeout_min
    mem_gb: float | None = None  # per node; None: launcher.mem_gb


@dataclass
class GridConfig:
    """One cartesian product: factor -> label -> {dotted.key: value or {scale: value}}."""

    factors: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # for every run of this grid


@dataclass
class AblationConfig:
    """One study (conf/ablation/<name>.yaml; format in conf/ablation/README.md)."""

    reproduces: str = ""  # the paper table or figure
    description: str = ""
    seeds: Any = None  # a list, or {scale: list}; None: [0]
    overrides: dict[str, Any] = field(default_factory=dict)  # for every run of the study
    factors: dict[str, dict[str, Any]] = field(default_factory=dict)  # one product
    grids: list[GridConfig] = field(default_factory=list)  # or a union of several products
    # What the study sets out to show, judged by the report (runfolder/study.py): each entry
    # claim, a and b (factor -> level label), sign (+1: A > B), metric, paper_diff, in_paper.
    findings: list[Any] = field(default_factory=list)
    # A study of the scale's baseline alone, on purpose (ablation/none.yaml): without it, a
    # study with no factors, grids or overrides - an empty file - is refused.
    baseline: bool = False


@dataclass
class LaunchConfig(RunConfig):
    """Everything launch.py composes; `RunConfig`'s fields are the run sections."""

    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    runs_root: str = "runs"
    dry_run: bool = False  # print the grid and its cost; write and submit nothing
    wait: bool = True  # return when every run has ended (False: right after submitting)
    seeds: list[int] | None = None  # replaces the ablation's seeds
    only: list[str] | None = None  # launch only the runs whose id contains one of these
    show: str | None = None  # print this run's config.yaml as a launch would write it; no launch
    retry_failed: bool = False  # resubmit failed runs even if neither config nor code changed
    run_name: str | None = None  # experiments/train.py: <runs_root>/train/<run_name>


def register() -> None:
    """Store the schema where conf/config.yaml's defaults list finds it, and the resolvers
    the config files use (idempotent)."""
    ConfigStore.instance().store(name="launch_schema", node=LaunchConfig)
    if not OmegaConf.has_resolver("r50_recipe"):
        OmegaConf.register_new_resolver("r50_recipe", r50_recipe)
