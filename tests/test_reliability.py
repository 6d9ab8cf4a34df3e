"""Failure drills: bad values refused before anything is written, job errors recorded in the
run folder, edited configs caught, full disks survived, kill -9 at any point followed by a
bitwise, exactly-once resume."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_launch import FAST, _cli, _files
from test_train import lines, tiny, weights

import moco3.checkpoint as ckpt
from moco3.config import to_run_config
from moco3.job import run_job
from runfolder.atomic import read_json

REPO = Path(__file__).resolve().parents[1]
STATUS = REPO / "experiments" / "status.py"
REPORT = REPO / "analysis" / "report.py"


def run_folder(tmp_path: Path, name: str = "run", **over) -> tuple[Path, str]:
    """A run folder as the launcher writes it; returns it and its config's sha256."""
    from experiments.rundir import write_run

    run = tmp_path / name
    return run, write_run(run, to_run_config(tiny(**over)))


# -- bad values: refused at compose time, one sentence, nothing written ----------------------
@pytest.mark.parametrize("value,message", [
    ("optim.base_lr=-1", "optim.base_lr=-1.0 must be greater than 0."),
    ("moco.queue_size=0", "moco.queue_size=0 must be at least 1."),
    ("train.epochs=0", "train.epochs=0 must be at least 1."),
    ("data.num_train=0", "data.num_train=0 must be at least 1."),
    ("train.batch_size=512", "train.batch_size=512 is larger than the training set"),
    ("data.crop_min=1.5", "data.crop_min=1.5 must be at most 1."),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, value, message):
    for extra in ((), ("dry_run=true",)):
        done = _cli(["ablation=none", "launcher=local", *FAST, value, *extra], tmp_path)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert _files(tmp_path) == []


def test_image_less_class_folders_are_refused_at_launch(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40)).save(root / split / "a" / f"{i}.png")
    done = _cli(["ablation=none", "launcher=local", "data=imagenet", f"data.root={root}",
                 "runs_root=runs"], tmp_path)
    assert done.returncode == 2
    assert "class folder" in done.stderr and "holds no images" in done.stderr
    assert not (tmp_path / "runs").exists()


# -- any exception in a job ends in state failed, with its sentence --------------------------
def test_a_job_error_reaches_status_json_status_py_and_the_report(tmp_path):
    run, sha = run_folder(tmp_path / "runs" / "none", "baseline/seed=0")
    ckpt.last_path(run).parent.mkdir(parents=True)
    ckpt.last_path(run).write_bytes(b"garbage")  # every checkpoint unreadable: in set-up
    with pytest.raises(ckpt.CheckpointError):
        run_job(run, sha)
    status = read_json(run / "status.json")
    assert status["state"] == "failed"
    assert status["error"].startswith("CheckpointError: every checkpoint in")
    assert len(status["error"].splitlines()) == 1
    failed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert failed[-1]["event"] == "failed" and failed[-1]["error"] == status["error"]
    shown = subprocess.run([sys.executable, str(STATUS), f"runs_root={tmp_path / 'runs'}",
                            "ablation=none"],
                           capture_output=True, text=True, timeout=120)
    assert "failed" in shown.stdout and "CheckpointError: every checkpoint" in shown.stdout
    out = tmp_path / "report"
    report = subprocess.run([sys.executable, str(REPORT), "--runs-root", str(tmp_path / "runs"),
                             "--out", str(out), "--no-pdf"], capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr
    assert "CheckpointError: every checkpoint" in (out / "README.md").read_text()


def test_an_exception_in_the_probe_is_recorded_too(tmp_path, monkeypatch):
    import moco3.probe

    run, sha = run_folder(tmp_path, **{"train.epochs": 1, "train.knn_every": 0})

    def broken(*args, **kwargs):
        raise RuntimeError("the probe broke\nsecond line")

    monkeypatch.setattr(moco3.probe, "probe", broken)
    with pytest.raises(RuntimeError):
        run_job(run, sha)
    status = read_json(run / "status.json")
    assert (status["state"], status["error"]) == ("failed", "RuntimeError: the probe broke")


# -- an edited config.yaml is refused, never reverted -----------------------------------------
def test_an_edited_config_is_refused_by_the_job_and_by_a_relaunch(tmp_path):
    args = ["ablation=none", "launcher=local", *FAST]
    assert _cli(args, tmp_path).returncode == 0
    config = tmp_path / "runs" / "none" / "baseline" / "seed=0" / "config.yaml"
    edited = config.read_text().replace("tau: 0.2", "tau: 0.3")
    config.write_text(edited)
    again = _cli(args, tmp_path)
    assert again.returncode == 1
    assert "moco.tau: 0.3 -> 0.2" in again.stdout and "nothing was rewritten" in again.stdout
    assert config.read_text() == edited  # never reverted
    # The job itself checks the file against the sha256 the launcher recorded.
    sha = read_json(config.parent / "status.json")["config_sha256"]
    with pytest.raises(Exception, match="was edited after the launcher wrote it"):
        run_job(config.parent, sha)


# -- a full disk: state failed, no temporary file, the previous checkpoint intact -------------
def test_a_full_disk_fails_the_run_cleanly(tmp_path, monkeypatch):
    run, sha = run_folder(tmp_path, **{"train.ckpt_every_steps": 4, "train.knn_every": 0})
    real = torch.save
    saves = {"n": 0}

    def save(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # the second checkpoint: half written, then the disk is full
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError):
        run_job(run, sha)
    status = read_json(run / "status.json")
    assert status["state"] == "failed" and "no space left on" in status["error"]
    assert "MB free, the checkpoint needs about" in status["error"]
    assert not [p for p in _files(run) if ".tmp" in p.name]
    assert ckpt.load(ckpt.last_path(run))["step"] == 4  # the previous checkpoint, intact
    monkeypatch.setattr(torch, "save", real)
    assert run_job(run, sha) == "done"  # space freed: it resumes


def test_a_kill_during_a_checkpoint_write_resumes_bitwise(tmp_path):
    """kill -9 in the middle of writing last.pt: the temporary file is left behind, the
    previous checkpoint is intact; the next start removes the leftover and ends bit-equal
    to an uninterrupted run, with every metrics row exactly once."""
    reference, ref_sha = run_folder(tmp_path, "reference")
    assert run_job(reference, ref_sha, threads=1) == "done"
    run, sha = run_folder(tmp_path, "killed")
    script = textwrap.dedent(f"""
        import os, signal, torch
        real, n = torch.save, [0]
        def save(obj, f, *a, **k):
            n[0] += 1
            if n[0] == 3:
                f.write(b"partial"); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
            return real(obj, f, *a, **k)
        torch.save = save
        from moco3.job import run_job
        run_job({str(run)!r}, {sha!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL
    assert [p.name for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    assert run_job(run, sha, threads=1) == "done"
    assert not [p for p in _files(run) if ".tmp" in p.name]
    assert_same_run(reference, run)


def assert_same_run(reference: Path, run: Path) -> None:
    a, b = weights(reference), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert lines(reference) == lines(run)


# -- exactly-once metrics after kill -9 at random points --------------------------------------
KILLER = textwrap.dedent("""
    import os, signal, sys, time
    from moco3.job import run_job
    run, sha, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def on_row(row):  # dies right after writing the row of `step`, before anything else
        if row["step"] == step and row["kind"] in ("train", "knn"):
            os.kill(os.getpid(), signal.SIGKILL)
    run_job(run, sha, on_row=on_row)
""")


def test_kill_9_at_random_points_leaves_metrics_exactly_once(tmp_path):
    """10 trials: each run is killed with SIGKILL after a random logged step (between a log
    step and the next checkpoint, or right at one), resumed, killed again, and finished;
    its metrics.jsonl equals the uninterrupted run's line for line (timings and the
    resumed event aside) and its weights are bit-identical."""
    over = {"train.ckpt_every_steps": 5, "train.milestones": [], "probe.enabled": False}
    reference, ref_sha = run_folder(tmp_path, "reference", **over)
    assert run_job(reference, ref_sha, threads=1) == "done"
    rng = random.Random(15)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial in range(10):
        run, sha = run_folder(tmp_path, f"trial{trial}", **over)
        kills = sorted(rng.sample(range(0, 16, 2), 2))  # steps with a train or knn row
        for step in kills:
            done = subprocess.run([sys.executable, "-c", KILLER, str(run), sha, str(step)],
                                  capture_output=True, timeout=300, env=env)
            assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert run_job(run, sha, threads=1) == "done"
        assert_same_run(reference, run)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [(r["kind"], r["step"]) for r in rows if r["kind"] == "train"]
        assert len(steps) == len(set(steps)) == 8, (trial, kills)


def test_every_start_appends_a_provenance_record(tmp_path):
    from runfolder.atomic import read_json_list

    run, sha = run_folder(tmp_path, **{"train.knn_every": 0, "probe.enabled": False})
    from moco3.train import train

    assert train(OmegaConf.load(run / "config.yaml"), run, stop_at_step=3) == "preempted"
    assert run_job(run, sha) == "done"
    assert run_job(run, sha) == "done"  # nothing left to train: still a start, recorded
    records = read_json_list(run / "env.json")
    assert len(records) == 2  # the two jobs; train() by hand is not a job
    for record in records:
        assert {"python", "torch_version", "torchvision_version", "timm_version",
                "cpu_capability", "gpu_count", "world_size", "host"} <= set(record)
        assert record["world_size"] == 1 and torch.__version__.startswith(record["torch_version"])
    assert "git_commit" in records[0] and isinstance(records[0]["git_dirty"], bool)


def test_a_resume_with_another_thread_count_keeps_the_first(tmp_path):
    """The thread count a run started with is recorded and reused on resume (matmul
    results depend on how the work is split)."""
    over = {"train.knn_every": 0, "probe.enabled": False}
    reference, ref_sha = run_folder(tmp_path, "reference", **over)
    assert run_job(reference, ref_sha, threads=1) == "done"
    run, sha = run_folder(tmp_path, "run", **over)
    from moco3.train import train

    assert train(OmegaConf.load(run / "config.yaml"), run, stop_at_step=5,
                 threads=1) == "preempted"
    assert read_json(run / "status.json")["threads"] == 1
    assert run_job(run, sha, threads=2) == "done"
    assert read_json(run / "status.json")["threads"] == 1
    assert ckpt.load(ckpt.last_path(run))["threads"] == 1
    assert_same_run(reference, run)
