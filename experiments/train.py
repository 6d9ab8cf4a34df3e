"""One pre-training run (then its linear probe), here, in this process.

    python experiments/train.py                                  # tiny scale, built-in data
    python experiments/train.py model.patch_embed=learned optim.base_lr=1e-3 run_name=lr1e-3
    python experiments/train.py scale=small data=cifar10 data.root=~/data/cifar10
    python experiments/train.py model.depth=6 show=NAME   # run_name=NAME's config.yaml, no run

It composes the same config tree as launch.py (defaults: scale=tiny, the built-in synthetic
data) and writes the run folder `<runs_root>/train/<run_name>` (default name: the time of
the launch) the way launch.py writes a study's, then runs the job in this process. Running
it again with the same run_name resumes that run from its checkpoint; a finished run is
left alone and a different configuration for an existing run_name is refused. A progress
bar shows the step, the loss, the last kNN accuracy and images/s.
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from moco3.config import ConfigError
from moco3.experiments.compose_errors import check_composition
from moco3.experiments.grid import GridError, PlannedRun, check_folder_name, expand
from moco3.experiments.launch import check_top_level_keys, help_overrides, hydra_argv
from moco3.experiments.rundir import (
    MANIFEST,
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
from moco3.experiments.schema import register
from moco3.runfolder.states import FAILED, RESULTS

register()


class Progress:
    """A tqdm bar fed by the training job's rows."""

    def __init__(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        self.knn: float | None = None

    def __call__(self, row: dict[str, Any]) -> None:
        if row["kind"] == "knn":
            self.knn = row["knn_top1"]
        elif row["kind"] == "train":
            self.bar.update(row["step"] - self.bar.n)
        shown = {"loss": f"{row['loss']:.3f}"} if row["kind"] == "train" else {}
        if self.knn is not None:
            shown["knn"] = f"{self.knn:.1f}%"
        if row["kind"] == "train":
            shown["img/s"] = f"{row['img_per_sec']:.0f}"
        self.bar.set_postfix(shown, refresh=True)


def plan(cfg: DictConfig, scale: str, name: str) -> PlannedRun:
    """The run `name` as launch.py plans a study's run (runs_root/train/<name>)."""
    (planned,) = expand(cfg, "train", scale)[:1]
    planned.config.meta.run_id = name
    return replace(planned, run_id=name)


def prepare(cfg: DictConfig, scale: str) -> tuple[Path, str | None]:
    """Plan the run and decide as launch.py does for a study's run (runs_root/train/
    <run_name>); write config.yaml, pending status and manifest if it is to run. Returns the
    folder and the config's sha256, None for a finished run; LaunchError when refused."""
    name = check_folder_name("run_name", cfg.run_name) if cfg.run_name is not None \
        else time.strftime("%Y%m%d-%H%M%S")
    run = plan(cfg, scale, name)
    directory = ablation_dir(cfg.runs_root, "train")
    run_dir = directory / name
    with launch_lock(directory, "train"):
        decision = decide(run, run_dir, None, lambda job: False, bool(cfg.retry_failed))
        if decision.action == "refuse" or decision.reason.startswith(FAILED):
            raise LaunchError(decision.reason)
        if decision.action == "skip":
            return run_dir, None
        sha = write_run(run_dir, run.config, rewrite=decision.rewrite)
        manifest = read_manifest(directory / MANIFEST)
        manifest[name] = manifest_row(run, "train", manifest.get(name), "here", sha)
        write_manifest(directory / MANIFEST, manifest)
    return run_dir, sha


def run_single(cfg: DictConfig, scale: str) -> int:
    run_dir, sha = prepare(cfg, scale)
    print(f"run folder: {run_dir}")
    if sha is None:
        state = json.loads((run_dir / "status.json").read_text())["state"]
        print(f"{state} already: nothing to do (pick another run_name to train again).")
        print(f"metrics: {run_dir / 'metrics.jsonl'}; summary: {run_dir / 'summary.json'}")
        return 0
    from moco3.job import error_sentence, run_job  # torch loads once the config is good

    progress: Progress | None = None

    def on_row(row: dict[str, Any]) -> None:
        nonlocal progress
        if progress is None:  # the job has written its total number of steps by now
            status = json.loads((run_dir / "status.json").read_text())
            progress = Progress(int(status["total_steps"]))
        progress(row)

    try:
        state = run_job(run_dir, sha, on_row=on_row, log=tqdm.write)
    except Exception as err:  # recorded in the run folder (status.json) by the job
        print(f"train.py: error: {error_sentence(err)} (state failed; see {run_dir})",
              file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.bar.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"pre-training: {state}")
    if summary.get("linear_top1") is not None:
        print(f"linear probe top-1: {summary['linear_top1']:.1f} %")
    print(f"metrics: {run_dir / 'metrics.jsonl'}; summary: {run_dir / 'summary.json'}")
    return 0 if state in RESULTS else 1


@hydra.main(version_base=None, config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    choices = HydraConfig.get().runtime.choices
    if choices["ablation"] != "none":
        print("train.py: error: experiments/train.py runs one configuration; launch a study "
              f"with python experiments/launch.py ablation={choices['ablation']}.",
              file=sys.stderr)
        sys.exit(2)
    try:
        check_top_level_keys(cfg)
        if cfg.show:  # show=NAME: the config.yaml run_name=NAME would get; nothing written
            sys.stdout.write(config_text(plan(cfg, choices["scale"], str(cfg.show)).config))
            sys.exit(0)
        check_runs_root(Path(cfg.runs_root))
        code = run_single(cfg, choices["scale"])
    except (ConfigError, GridError, LaunchError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # a read-only or full runs root, found while writing
        print(f"train.py: error: cannot write {err.filename or cfg.runs_root}: "
              f"{err.strerror or err}; choose another runs_root= or free some space.",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("train.py: interrupted; run the same command again to resume.", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


def main() -> None:
    """`python experiments/train.py ...` and the installed `moco3-train`."""
    try:
        argv = ["--help" if a == "-h" else a for a in sys.argv[1:]]
        sys.argv[1:] = hydra_argv(argv) + help_overrides(argv, "python experiments/train.py",
                                                          "train")
    except LaunchError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = check_composition(sys.argv[1:], "train.py")
    hydra_main()


if __name__ == "__main__":
    main()
