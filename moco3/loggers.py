"""Where else the metrics rows go: TensorBoard, Weights & Biases, CSV (train.loggers).

Each logger is a `moco3.runlog.RowSink` fed with every row written to metrics.jsonl, on
rank 0 only, writing inside the run folder.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from moco3.runlog import RowSink


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[RowSink]:
    """The sinks of `cfg.train.loggers` for the run folder `run_dir` (main process)."""
    if cfg.train.loggers:
        raise NotImplementedError("train.loggers: being written")
    return []
