"""Where else the metrics rows go: TensorBoard, Weights & Biases, CSV (train.loggers).

Each logger is a `moco3.runlog.RowSink` fed with every row written to metrics.jsonl, on
rank 0 only, writing inside the run folder (moco3.runfolder.layout):

    tensorboard/         event files of the pre-training step (train, knn and event rows)
    tensorboard/probe/   event files of the probe epoch (probe rows): an axis of its own
    csv/<kind>.csv       the rows of each kind, columns fixed by moco3.runfolder.rows.KEYS
    wandb_id, wandb/     the W&B run every restart of the job continues; W&B's own files
    wandb_session.json   while a job logs to W&B (see WandbLogger)

Values are named as in metrics.jsonl, `<kind>/<key>` (train/loss, knn/knn_top1,
probe/probe_top1, ...), events `event/<event>[/<group>]` = their value (`scalars`, shared
with the converter `python -m moco3.tensorboard`). Exactly once: a resumed run rewinds
metrics.jsonl to its checkpoint and writes the later steps again; TensorBoard and CSV drop
the same rows. W&B history cannot be rewritten: a resumed run logs its replayed steps again
(the same values: the resume is bitwise, timings aside) against the row's step as x-axis,
and what a killed job had not handed over yet (WandbLogger).
Each logger imports its package only when it is asked for.
"""

from __future__ import annotations

import csv
import importlib
import io
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from moco3.runfolder import layout
from moco3.runfolder.atomic import (
    atomic_open,
    read_json,
    remove_stale_temporaries,
    write_json,
    write_text,
)
from moco3.runfolder.rows import COMMON_KEYS, KEYS, read_rows
from moco3.runlog import RowSink

Row = dict[str, Any]


def require(module: str, extra: str) -> Any:
    """Import `module`, or fail with the one sentence that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"the {extra} logger needs a package that is not installed "
                          f"({err}); pip install 'moco3[{extra}]'") from err


# -- what TensorBoard and W&B show of a row -----------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def scalars(row: Row) -> dict[str, float]:
    """The plotted values of one metrics row: `<kind>/<key>` for each numeric value (step,
    epoch and images_seen place the row, they are not plotted); an event row gives its
    value as `event/<event>/<group>` (grad_spike) or `event/<event>` (knn_dip, diverged)."""
    kind = row.get("kind")
    if not isinstance(kind, str) or not _number(row.get("step")):
        return {}
    if kind == "event":
        name, group, value = row.get("event"), row.get("group"), row.get("value")
        if not isinstance(name, str) or not _number(value):
            return {}  # resumed, preempted, failed: nothing to plot
        return {f"event/{name}/{group}" if group else f"event/{name}": float(value)}
    return {f"{kind}/{key}": float(value) for key, value in row.items()
            if key not in COMMON_KEYS and _number(value)}


def step_axis(row: Row) -> str:
    """The event folder of a row below tensorboard/: probe rows count probe epochs, so they
    get their own ("probe"); the rest share the pre-training step ("")."""
    return layout.TENSORBOARD_PROBE if row.get("kind") == "probe" else ""


# -- TensorBoard ---------------------------------------------------------------------------
class EventFolder:
    """One TensorBoard run: a folder of event files on one step axis, every step's scalars
    in it exactly once across rewinds.

    A rewind to step S rewrites the closed files as one that holds only steps <= S
    (`compact_events`: what any reader started later sees) and reopens the writer with
    purge_step=S+1, whose purge event makes a running TensorBoard that already read the
    stale steps drop them (its default loader does; the legacy one, --load_fast=false,
    ignores purge events and shows them twice until it is restarted).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.writer: Any = None
        self.purge_step: int | None = None
        self.summary_writer = require("torch.utils.tensorboard", "tensorboard").SummaryWriter

    def add(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:  # opened at the first value: no empty files
            self.writer = self.summary_writer(str(self.path), purge_step=self.purge_step)
            self.purge_step = None
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        # On disk now, not in two minutes: a row at or before the checkpoint a killed job
        # resumes from is never written again.
        self.writer.flush()

    def rewind(self, step: int) -> None:
        """Drop the scalars of the steps after `step` (-1: all); they will be written again."""
        self.close()
        compact_events(self.path, step)
        self.purge_step = step + 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# The name a compacted folder's events get: "events.out.tfevents.<seconds>..." is how
# writers name files and readers read a folder's files in name order, so this one sorts
# before any file written later (a new file's time can even tie with an old one's).
COMPACTED = "events.out.tfevents.0000000000.moco3"
STAGING = "compacting"  # no "tfevents" in it: readers ignore it until it is renamed


def compact_events(folder: Path, step: int) -> None:
    """Rewrite the event files directly in `folder` as one file (COMPACTED) holding the
    scalar events of steps <= `step`, each (step, tag) once: the last written.

    The newest old file is emptied, not removed: a running TensorBoard reads on from the
    file it is at (reopening it by name at its offset), so there it finds the end and goes
    on to the next file, the writer's with the purge event; it stops at a removed file.
    """
    if not folder.is_dir():
        return
    remove_stale_temporaries(folder)  # a compaction killed mid-write
    files = sorted(p for p in folder.iterdir() if p.is_file() and "tfevents" in p.name)
    if not files:
        return
    event_pb2 = require("tensorboard.compat.proto.event_pb2", "tensorboard")
    loader = require("tensorboard.backend.event_processing.event_file_loader", "tensorboard")
    record_writer = require("tensorboard.summary.writer.record_writer", "tensorboard")
    latest: dict[tuple, Any] = {}
    for path in files:
        for record in loader.RawEventFileLoader(str(path)).Load():  # a torn last record ends it
            event = event_pb2.Event.FromString(record)
            if not event.HasField("summary") or event.step > step:
                continue  # file versions and purge events are written anew
            key = (event.step, tuple(value.tag for value in event.summary.value))
            if key not in latest or event.wall_time >= latest[key].wall_time:
                latest[key] = event
    kept = sorted(latest.values(), key=lambda event: (event.step, event.wall_time))
    if kept:
        with atomic_open(folder / STAGING, "wb") as f:
            writer = record_writer.RecordWriter(f)
            # file_version 2: readers purge on purge events only, never on step order.
            writer.write(event_pb2.Event(wall_time=kept[0].wall_time,
                                         file_version="brain.Event:2").SerializeToString())
            for event in kept:
                writer.write(event.SerializeToString())
        (folder / STAGING).replace(folder / COMPACTED)
    # Only now, with the kept events safe: a kill before here leaves them twice, and the
    # next rewind keeps one of each.
    for path in files:
        if path.name == COMPACTED and kept:
            continue
        if path == files[-1] and path.name != COMPACTED:
            path.write_bytes(b"")
        else:
            path.unlink(missing_ok=True)


class TensorBoardLogger:
    """tensorboard/ (pre-training step) and tensorboard/probe/ (probe epoch): two runs, so
    that rewinding the probe never purges pre-training steps and vice versa."""

    def __init__(self, folder: Path) -> None:
        self.main = EventFolder(folder)
        self.probe = EventFolder(folder / layout.TENSORBOARD_PROBE)

    def write(self, row: Row) -> None:
        values = scalars(row)
        if values:
            (self.probe if step_axis(row) else self.main).add(int(row["step"]), values)

    def rewind(self, keep: Callable[[Row], bool], step: int, probe: bool) -> None:
        # Rows are dropped by step on the rewound axis only, as metrics.jsonl drops them;
        # the rows `keep` spares beyond it (resumed, preempted) have no scalars.
        (self.probe if probe else self.main).rewind(step)

    def close(self) -> None:
        self.main.close()
        self.probe.close()


# -- CSV -----------------------------------------------------------------------------------
def csv_columns(kind: str) -> list[str]:
    """The columns of <kind>.csv: the contract's keys of the kind (the file names it)."""
    return ["step", "epoch", "images_seen", *sorted(KEYS[kind] - COMMON_KEYS)]


def csv_value(text: str) -> Any:
    """A CSV cell read back as the row held it: int, float (nan, inf too) or text."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


class CsvLogger:
    """csv/<kind>.csv for the kinds of the contract, a header and one line per row; a key a
    row lacks is an empty cell, so rows line up. Keys outside the contract are not written."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files: dict[str, IO[str]] = {}

    def write(self, row: Row) -> None:
        kind = row.get("kind")
        if kind not in KEYS:
            return  # no columns for it
        if kind not in self.files:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{kind}.csv"
            new = not path.exists() or path.stat().st_size == 0
            self.files[kind] = open(path, "a", newline="")  # noqa: SIM115 -- until close()
            if new:
                self._writer(kind, self.files[kind]).writeheader()
        self._writer(kind, self.files[kind]).writerow(row)
        self.files[kind].flush()  # whole lines as metrics.jsonl: a killed job loses no row

    def rewind(self, keep: Callable[[Row], bool], step: int, probe: bool) -> None:
        """Rewrite each file atomically with the rows `keep` accepts, the rule metrics.jsonl
        follows; a line a killed job left unfinished goes too."""
        self.close()
        for kind in KEYS:
            path = self.folder / f"{kind}.csv"
            if not path.exists():
                continue
            text = path.read_text()
            lines = list(csv.reader(io.StringIO(text[:text.rfind("\n") + 1])))
            header, kept = (lines[0] if lines else []), []
            for cells in lines[1:]:
                if len(cells) != len(header):
                    continue
                row = {"kind": kind, **{key: csv_value(cell)
                                        for key, cell in zip(header, cells, strict=True)
                                        if cell != ""}}
                if keep(row):
                    kept.append(dict(zip(header, cells, strict=True)))  # the text as written
            with atomic_open(path, "w") as f:
                writer = self._writer(kind, f)
                writer.writeheader()
                writer.writerows(kept)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}

    @staticmethod
    def _writer(kind: str, f: IO[str]) -> csv.DictWriter:
        return csv.DictWriter(f, csv_columns(kind), extrasaction="ignore", lineterminator="\n")


# -- Weights & Biases -----------------------------------------------------------------------
def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: stored in <run_dir>/wandb_id the first time, before
    W&B hears of it, so every later start of the job continues the same W&B run."""
    path = run_dir / layout.WANDB_ID
    try:
        stored = path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if not stored:
        stored = secrets.token_hex(8)
        write_text(path, stored + "\n")
    return stored


class WandbLogger:
    """The run folder's W&B run (project train.wandb_project, group meta.ablation). Each
    kind's values are plotted against `<kind>/step`, the row's step: W&B's own step only
    grows, and a resumed run logs the steps after its checkpoint again (at least once).

    W&B writes what it is sent in blocks: a job killed with SIGKILL loses the rows W&B had
    not written yet, some of them at or before the checkpoint it resumes from (so never
    logged again). Each job therefore notes in wandb_session.json, until it ends, where it
    started; the next job, finding the note, logs again the rows the killed job wrote that
    metrics.jsonl keeps.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        wandb = require("wandb", "wandb")
        self.run_dir = run_dir
        self.session = run_dir / layout.WANDB_SESSION
        self.run = wandb.init(
            project=cfg.train.wandb_project, entity=cfg.train.wandb_entity,
            id=wandb_run_id(run_dir), resume="allow", dir=str(run_dir),
            name=cfg.meta.run_id or run_dir.name, group=cfg.meta.ablation,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        self.axes: set[str] = set()

    def write(self, row: Row) -> None:
        values = scalars(row)
        if not values:
            return
        kind = row["kind"]
        if kind not in self.axes:
            self.run.define_metric(f"{kind}/step", hidden=True)
            self.run.define_metric(f"{kind}/*", step_metric=f"{kind}/step")
            self.axes.add(kind)
        self.run.log({f"{kind}/step": row["step"], **values})

    def rewind(self, keep: Callable[[Row], bool], step: int, probe: bool) -> None:
        """History cannot be deleted: the steps after `step` will be logged again. Before
        that, the rows a killed job wrote on its axis, past where it started, that stay."""
        killed = read_json(self.session)
        if killed is not None:
            rows, _ = read_rows(self.run_dir / layout.METRICS)
            for row in rows:
                if ((row.get("kind") == "probe") == bool(killed.get("probe"))
                        and _number(row["step"]) and row["step"] > killed.get("step", -1)
                        and keep(row)):
                    self.write(row)
        write_json(self.session, {"step": step, "probe": probe})

    def close(self) -> None:
        self.run.finish()
        self.session.unlink(missing_ok=True)  # ended: W&B has written all it was sent


# -- the job's loggers ----------------------------------------------------------------------
def build_loggers(cfg: DictConfig, run_dir: Path) -> list[RowSink]:
    """The sinks of `cfg.train.loggers` for the run folder `run_dir` (main process); a name
    listed twice gives one logger. A package that is missing fails here, at job start."""
    run_dir = Path(run_dir)
    sinks: list[RowSink] = []
    try:
        for name in dict.fromkeys(cfg.train.loggers):
            if name == "tensorboard":
                sinks.append(TensorBoardLogger(run_dir / layout.TENSORBOARD))
            elif name == "csv":
                sinks.append(CsvLogger(run_dir / layout.CSV))
            elif name == "wandb":
                sinks.append(WandbLogger(cfg, run_dir))
            else:  # moco3.config.validate refuses it first
                raise ValueError(f"train.loggers has {name!r}, which is no logger")
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks

