"""One pre-training run (then its linear probe), here, in this process.

    python experiments/train.py                                  # tiny scale, built-in data
    python experiments/train.py model.patch_embed=learned optim.base_lr=1e-3 run_name=lr1e-3
    python experiments/train.py scale=small data=cifar10 data.root=~/data/cifar10

It composes the same config tree as launch.py (defaults: scale=tiny, the built-in synthetic
data) and writes the run folder `<runs_root>/train/<run_name>` (default name: the time of
the launch). Running it again with the same run_name resumes that run from its checkpoint;
a different configuration for an existing run_name is refused. A progress bar shows the
step, the loss, the last kNN accuracy and images/s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from experiments.grid import GridError, expand
from experiments.schema import register
from moco3.config import ConfigError, config_hash, load_run_config

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


def run_single(cfg: DictConfig, scale: str) -> int:
    name = cfg.run_name or time.strftime("%Y%m%d-%H%M%S")
    (planned,) = expand(cfg, "train", scale)[:1]
    run_cfg = planned.config
    run_cfg.meta.run_id = name
    run_dir = Path(cfg.runs_root) / "train" / name
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        if config_hash(load_run_config(config_path)) != planned.config_hash:
            raise ConfigError(f"{run_dir} holds a run of another configuration; pick a new "
                              "run_name or repeat that run's overrides to resume it.")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(run_cfg, config_path)
    print(f"run folder: {run_dir}")
    from moco3.probe import probe  # torch loads only once the config is known to be good
    from moco3.train import train

    progress: Progress | None = None

    def on_row(row: dict[str, Any]) -> None:
        nonlocal progress
        if progress is None:  # the job has written its total number of steps by now
            status = json.loads((run_dir / "status.json").read_text())
            progress = Progress(int(status["total_steps"]))
        progress(row)

    state = train(run_cfg, run_dir, on_row=on_row, log=tqdm.write)
    if progress is not None:
        progress.bar.close()
    print(f"pre-training: {state}")
    if state == "done" and run_cfg.probe.enabled:
        top1 = probe(run_cfg, run_dir, log=tqdm.write)
        print(f"linear probe top-1: {top1:.1f} %")
    print(f"metrics: {run_dir / 'metrics.jsonl'}; summary: {run_dir / 'summary.json'}")
    return 0 if state in ("done", "diverged") else 1


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    choices = HydraConfig.get().runtime.choices
    if choices["ablation"] != "none":
        print("train.py: error: experiments/train.py runs one configuration; launch a study "
              f"with python experiments/launch.py ablation={choices['ablation']}.",
              file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(run_single(cfg, choices["scale"]))
    except (ConfigError, GridError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
