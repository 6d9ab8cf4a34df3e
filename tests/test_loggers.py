"""Optional loggers (train.loggers: tensorboard, wandb, csv) and the TensorBoard converter:
what they hold equals metrics.jsonl step for step, exactly once across a stop, a kill -9 and
a replayed probe epoch. Read back with TensorBoard's own event reader, the csv module and
W&B's offline run files (WANDB_MODE=offline: no network)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import tiny

from moco3.config import ConfigError, to_run_config
from moco3.experiments.progress import run_ids
from moco3.experiments.rundir import write_run
from moco3.job import run_job
from moco3.loggers import CsvLogger, EventFolder, build_loggers
from moco3.probe import probe
from moco3.runfolder.rows import KEYS, TIMING_KEYS
from moco3.tensorboard import main as convert
from moco3.train import train

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)

LOGGERS = ["tensorboard", "wandb", "csv"]
TIMING_TAGS = {f"train/{key}" for key in TIMING_KEYS}
JOB_EVENTS = ("resumed", "preempted")


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory):
    """W&B offline and silent, its own folders in tmp (none in the home folder)."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                           "WANDB_DIR": home, "WANDB_CONFIG_DIR": home / "config",
                           "WANDB_CACHE_DIR": home / "cache",
                           "WANDB_DATA_DIR": home / "data"}.items():
            mp.setenv(var, str(value))
        yield


def run_folder(path: Path, loggers: list[str] = LOGGERS) -> tuple[Path, str]:
    """A run folder as the launcher writes it; returns it and its config's sha256."""
    return path, write_run(path, to_run_config(tiny(**{"train.loggers": loggers})))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted job (pre-training, kNN, probe) with every logger."""
    run, sha = run_folder(tmp_path_factory.mktemp("reference") / "run")
    assert run_job(run, sha, threads=1, log=quiet) == "done"
    return run


# -- reading back ---------------------------------------------------------------------------
def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def f32(value: float) -> float:
    """What TensorBoard stores of a value (a float32)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def scalars(folder: Path, purge: bool = True) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of one TensorBoard run, read as TensorBoard reads it (purge=False: the
    events as they are on disk, whatever purge events say)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0},
                              purge_orphaned_data=purge).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def untimed(tags: dict[str, Any]) -> dict[str, Any]:
    return {tag: value for tag, value in tags.items() if tag not in TIMING_TAGS}


def csv_lines(run: Path, kind: str) -> list[dict[str, str]]:
    with open(run / "csv" / f"{kind}.csv", newline="") as f:
        return list(csv.DictReader(f))


def as_csv(rows: list[dict[str, Any]], kind: str) -> list[dict[str, str]]:
    """metrics.jsonl rows of `kind` as their CSV lines read back: every key of the kind's
    contract a column, the text of the value (empty when the row lacks it)."""
    columns = sorted(KEYS[kind] - {"kind"})
    return [{key: "" if row.get(key) is None else str(row[key]) for key in columns}
            for row in rows if row["kind"] == kind]


def without(lines: list[dict[str, str]], keys: set[str]) -> list[dict[str, str]]:
    return [{k: v for k, v in line.items() if k not in keys} for line in lines
            if line.get("event") not in JOB_EVENTS]


def wandb_sessions(run: Path) -> list[tuple[str, list[dict[str, Any]], Any]]:
    """(run id, history rows, run record) of each offline W&B session in the run folder
    (offline-run-<time>-<id>[-n]/), read from its .wandb file (W&B's leveldb-style log of
    protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    sessions = []
    for folder in sorted((run / "wandb").glob("offline-run-*")):
        history, record_of_run = [], None
        for record in _records(next(folder.glob("*.wandb")).read_bytes(), pb.Record):
            if record.WhichOneof("record_type") == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(
                    item.value_json) for item in record.history.item})
            elif record.WhichOneof("record_type") == "run":
                record_of_run = record.run
        if record_of_run is not None:  # None: killed before W&B wrote a block
            sessions.append((record_of_run.run_id, history, record_of_run))
    return sessions


def _records(data: bytes, record_type: Any) -> list[Any]:
    """Records of a .wandb file: a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, [], []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            records.append(record_type.FromString(b"".join(chunks)))
            chunks = []
    return records


def wandb_values(run: Path, kind: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of `<kind>/<key>` in every W&B session, in the order logged."""
    return [(row[f"{kind}/step"], row[f"{kind}/{key}"]) for _, history, _ in
            wandb_sessions(run) for row in history if f"{kind}/{key}" in row]


# -- one run: the loggers hold what metrics.jsonl holds ----------------------------------------
def test_the_loggers_hold_what_metrics_jsonl_holds(reference):
    rows = metrics(reference)
    main, probed = scalars(reference / "tensorboard"), scalars(reference / "tensorboard/probe")
    for kind, key, tags in (("train", "loss", main), ("train", "lr", main),
                            ("knn", "knn_top1", main), ("probe", "probe_top1", probed)):
        expected = [(r["step"], f32(r[key])) for r in rows if r["kind"] == kind]
        assert len(expected) >= 2 and tags[f"{kind}/{key}"] == expected, (kind, key)
    assert {"train/grad_norm_patch_embed", "train/grad_norm_heads", "train/momentum",
            "train/sec_per_step", "knn/knn_top1"} <= set(main)
    assert {tag.split("/")[0] for tag in main} <= {"train", "knn", "event"}
    assert {tag.split("/")[0] for tag in probed} == {"probe"}
    events = [r for r in rows if r["kind"] == "event" and "value" in r]
    assert events, "the tiny run has a kNN dip to log"
    for r in events:
        tag = f"event/{r['event']}" + (f"/{r['group']}" if r.get("group") else "")
        assert (r["step"], f32(r["value"])) in main[tag]

    for kind in KEYS:
        assert csv_lines(reference, kind) == as_csv(rows, kind), kind

    (stored,) = (reference / "wandb_id").read_text().split()
    sessions = wandb_sessions(reference)
    assert [session[0] for session in sessions] == [stored, stored]  # pre-training, probe
    assert (sessions[0][2].display_name, sessions[0][2].run_group) == ("baseline/seed=0", "none")
    for kind, key in (("train", "loss"), ("knn", "knn_top1"), ("probe", "probe_top1")):
        assert wandb_values(reference, kind, key) == [
            (r["step"], r[key]) for r in rows if r["kind"] == kind]


# -- a stopped, killed and replayed run: every step once, equal to the reference ----------------
KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from moco3.job import run_job
    run, sha, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def on_row(row):  # dies right after the row of `step`, past the checkpoint of step 8
        if row["step"] == step:
            os.kill(os.getpid(), signal.SIGKILL)
    run_job(run, sha, threads=1, on_row=on_row)
""")


def test_a_stopped_killed_and_replayed_run_logs_every_step_once(reference, tmp_path):
    run, sha = run_folder(tmp_path / "run")
    cfg = OmegaConf.load(run / "config.yaml")
    assert train(cfg, run, stop_at_step=5, threads=1, log=quiet) == "preempted"
    stored = (run / "wandb_id").read_text()
    # kill -9 after the rows of step 12; the job resumes from step 8 and writes 9-12 again.
    # A job of its own, as a requeued one is: not attached to this process's W&B service
    # (W&B hands it to child processes), which would hold the killed run as in use.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    with open(tmp_path / "killed.err", "w") as err:  # not a pipe: W&B's service outlives it
        done = subprocess.run([sys.executable, "-c", KILLER, str(run), sha, "12"], env=env,
                              stdout=subprocess.DEVNULL, stderr=err, timeout=300)
    assert done.returncode == -signal.SIGKILL, (tmp_path / "killed.err").read_text()[-2000:]
    assert any(r["step"] == 12 for r in metrics(run))
    # the probe stops after epoch 1, then a job finishes it; then its checkpoint goes back
    # to epoch 1, as if killed after epoch 2's row was logged: the next job replays epoch 2
    assert train(cfg, run, threads=1, log=quiet) == "done"
    probe(cfg, run, stop_at_epoch=1, log=quiet)
    shutil.copy(run / "checkpoints/probe_last.pt", tmp_path / "probe_epoch1.pt")
    assert run_job(run, sha, threads=1, log=quiet) == "done"
    shutil.copy(tmp_path / "probe_epoch1.pt", run / "checkpoints/probe_last.pt")
    assert run_job(run, sha, threads=1, log=quiet) == "done"

    rows = metrics(run)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [r["step"] for r in rows if r["kind"] == "probe"] == [1, 2]
    for axis in ("tensorboard", "tensorboard/probe"):
        expected = untimed(scalars(reference / axis))
        for purge in (True, False):  # on disk too: what a purge-blind reader sees
            assert untimed(scalars(run / axis, purge)) == expected, (axis, purge)
    for kind in KEYS:
        assert csv_lines(run, kind) == as_csv(rows, kind), kind
        assert without(csv_lines(run, kind), TIMING_KEYS) == \
            without(csv_lines(reference, kind), TIMING_KEYS), kind

    assert (run / "wandb_id").read_text() == stored
    sessions = wandb_sessions(run)
    assert len(sessions) >= 5 and {session[0] for session in sessions} == {stored.strip()}
    assert {p.name.split("-")[3] for p in (run / "wandb").glob("offline-run-*")} == \
        {stored.strip()}
    assert not (run / "wandb_session.json").exists()  # the last job ended
    # Every step at least once, what the killed job's W&B never wrote included; a replayed
    # step may be there twice, with the same value.
    for kind, key in (("train", "loss"), ("knn", "knn_top1"), ("probe", "probe_top1")):
        want = {r["step"]: r[key] for r in metrics(reference) if r["kind"] == kind}
        logged = wandb_values(run, kind, key)
        assert {step for step, _ in logged} == set(want), kind
        assert all(want[step] == value for step, value in logged), kind


# -- the converter -------------------------------------------------------------------------------
def test_the_converter_gives_the_live_loggers_scalars_once(reference, tmp_path, capsys):
    root = tmp_path / "runs"
    run, sha = run_folder(root / "abl" / "lr=1" / "seed=0", loggers=[])
    assert run_job(run, sha, threads=1, log=quiet) == "done"
    assert not {"tensorboard", "csv", "wandb", "wandb_id"} & {p.name for p in run.iterdir()}
    # a folder an older version resumed: a step written twice, a truncated last line
    old = root / "older" / "run"
    old.mkdir(parents=True)
    lines = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)
    again = json.loads(lines[2])
    assert (again["kind"], again["step"]) == ("train", 4)
    again["loss"] = 7.5
    old.joinpath("metrics.jsonl").write_text("".join(lines[:4]) + json.dumps(again) + "\n"
                                             + '{"kind": "train", "st')

    assert convert([str(root)]) == 0
    out = root / "tensorboard"
    for axis in ("", "probe"):
        assert untimed(scalars(out / "abl/lr=1/seed=0" / axis)) == \
            untimed(scalars(reference / "tensorboard" / axis)), axis
    old_loss = scalars(out / "older/run")["train/loss"]
    assert old_loss[1] == (again["step"], 7.5) and len(old_loss) == 2
    err = capsys.readouterr().err
    assert "truncated last line" in err and "1 repeated row(s)" in err

    before = {axis: scalars(out / "abl/lr=1/seed=0" / axis, purge=False)
              for axis in ("", "probe")}
    done = subprocess.run([sys.executable, "-m", "moco3.tensorboard", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"tensorboard --logdir {out}" in done.stdout
    for axis in ("", "probe"):  # replaced, not appended to
        folder = out / "abl/lr=1/seed=0" / axis
        assert scalars(folder, purge=False) == before[axis]
        assert len([p for p in folder.glob("*tfevents*") if p.stat().st_size]) == 1


# -- the pieces ----------------------------------------------------------------------------------
def test_an_event_folder_rewound_again_and_again_holds_each_step_once(tmp_path):
    """Writers opened within one second (their file names then sort by pid and counter,
    not by age) still leave each step once, the last written value, on disk."""
    folder = tmp_path / "tb"
    for session in range(12):
        events = EventFolder(folder)
        last = 2 + session % 3 if session else -1
        events.rewind(last)
        for step in range(last + 1, 7):
            events.add(step, {"x": 100 * session + step})
        events.close()
    for purge in (True, False):
        assert scalars(folder, purge)["x"] == [(0, 0), (1, 1), (2, 2), (3, 903), (4, 1004),
                                              (5, 1105), (6, 1106)]


def test_a_tensorboard_that_read_the_stale_steps_drops_them(tmp_path):
    """A TensorBoard already showing the steps a resumed job writes again drops them at
    the new writer's purge event (purge_step = checkpoint step + 1)."""
    folder = tmp_path / "tb"
    events = EventFolder(folder)
    for step in range(7):
        events.add(step, {"x": step})
    events.close()
    live = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    assert len(live.Scalars("x")) == 7
    time.sleep(1.1)  # the next file's name (its time in seconds first) sorts after
    events = EventFolder(folder)
    events.rewind(3)
    for step in range(4, 7):
        events.add(step, {"x": 100 + step})
    events.close()
    assert [(e.step, e.value) for e in live.Reload().Scalars("x")] == [
        (0, 0), (1, 1), (2, 2), (3, 3), (4, 104), (5, 105), (6, 106)]


def test_a_csv_rewind_keeps_what_keep_accepts_and_drops_a_torn_line(tmp_path):
    logger = CsvLogger(tmp_path)
    for step in (2, 4, 6):
        logger.write({"kind": "train", "step": step, "epoch": step / 8, "images_seen": 32 * step,
                      "loss": 1.0 / step, "extra": "not a column"})
    logger.close()
    with open(tmp_path / "train.csv", "a") as f:
        f.write("8,1.0,256,,,")  # a job killed mid-line
    logger.rewind(lambda row: row["step"] <= 4, 4, False)
    with open(tmp_path / "train.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [(line["step"], line["loss"], line["lr"]) for line in lines] == [
        ("2", "0.5", ""), ("4", "0.25", "")]


def test_unknown_loggers_are_refused_and_missing_packages_named(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="train.loggers has 'mlflow'"):
        to_run_config(tiny(**{"train.loggers": ["mlflow"]}))
    for name, module in (("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")):
        cfg = to_run_config(tiny(**{"train.loggers": [name]}))
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        with pytest.raises(ImportError, match=rf"pip install 'moco3\[{name}\]'"):
            build_loggers(cfg, tmp_path)


@pytest.mark.parametrize("name", ["wandb", "tensorboard"])
def test_a_logger_without_its_package_is_refused_at_compose_time(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ConfigError, match=rf"train.loggers has '{name}', whose package {name} "
                       rf"is not installed here; pip install 'moco3\[{name}\]'"):
        to_run_config(tiny(**{"train.loggers": ["csv", name]}))


def test_the_launch_refuses_a_logger_without_its_package_and_writes_nothing(tmp_path):
    """The real command, in an interpreter where wandb cannot be imported."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(blocker), str(REPO), os.environ.get("PYTHONPATH", "")])}
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "launch.py"),
                           "ablation=predictor", "launcher=local", "train.loggers=[wandb]"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    error = done.stderr.strip()
    assert error.count("\n") == 0 and "pip install 'moco3[wandb]'" in error, error
    assert list(work.iterdir()) == []


def test_status_lists_no_run_inside_a_run_folder(tmp_path):
    """W&B keeps a config.yaml of its own in <run>/wandb/run-*/files/: not a run."""
    for folder in ("a/seed=0", "a/seed=0/wandb/run-x/files", "b"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "config.yaml").write_text("seed: 0\n")
    assert run_ids(tmp_path) == ["a/seed=0", "b"]

