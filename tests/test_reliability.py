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
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from side_by_side import two_at_a_time
from test_launch import FAST, _cli, _files
from test_train import lines, tiny, weights

import moco3.checkpoint as ckpt
from moco3.config import to_run_config
from moco3.job import run_job
from moco3.runfolder.atomic import read_json

REPO = Path(__file__).resolve().parents[1]
STATUS = REPO / "experiments" / "status.py"
REPORT = REPO / "analysis" / "report.py"


def run_folder(tmp_path: Path, name: str = "run", **over) -> tuple[Path, str]:
    """A run folder as the launcher writes it; returns it and its config's sha256."""
    from moco3.experiments.rundir import write_run

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
    trials = [(*run_folder(tmp_path, f"trial{trial}", **over),
               sorted(rng.sample(range(0, 16, 2), 2)))  # steps with a train or knn row
              for trial in range(10)]

    def kill_twice(trial: tuple[Path, str, list[int]]) -> list[subprocess.CompletedProcess]:
        run, sha, kills = trial
        return [subprocess.run([sys.executable, "-c", KILLER, str(run), sha, str(step)],
                               capture_output=True, timeout=300, env=env) for step in kills]

    # Trials are independent run folders and each killer dies at a row, not at a time, so two
    # trials are killed at once (one thread each, on 2 cores): the same drill in less time.
    killed = two_at_a_time(kill_twice, trials)
    # The resumes run here, one after another: run_job installs signal handlers, which only
    # the main thread may do.
    for trial, ((run, sha, kills), dones) in enumerate(zip(trials, killed, strict=True)):
        for done in dones:
            assert done.returncode == -signal.SIGKILL, (trial, kills, done.stderr[-2000:])
        assert run_job(run, sha, threads=1) == "done"
        assert_same_run(reference, run)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [(r["kind"], r["step"]) for r in rows if r["kind"] == "train"]
        assert len(steps) == len(set(steps)) == 8, (trial, kills)


def test_every_start_appends_a_provenance_record(tmp_path):
    from moco3.runfolder.atomic import read_json_list

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


# == the drills of the second battery: each failure it found, rerun as it was found ===========
LAUNCH = REPO / "experiments" / "launch.py"
TRAIN = REPO / "experiments" / "train.py"
# A local run of 80 steps of a very small model (tests/test_train.py's tiny()), in fp32,
# status.json updated at every step: a drill can catch it mid-run, and it ends in seconds.
LONG = ["model.img_size=16", "model.patch_size=4", "model.depth=1", "model.embed_dim=48",
        "model.num_heads=3", "model.mlp_dim=96", "model.dim=32", "data=synthetic",
        "data.num_train=256", "data.num_val=64", "train.batch_size=32", "train.epochs=10",
        "train.precision=fp32", "train.log_every=1", "train.knn_every=1000",
        "train.knn_memory=256", "train.knn_queries=64", "probe.enabled=false",
        "launcher.cores=1"]


def _alive(pid: int) -> bool:
    """A process that has not exited (a zombie nobody reaped has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# -- 1. a dead pool: the orphaned job is the only writer, shown running, and ends ------------
def test_a_dead_pool_leaves_one_writer_that_finishes(tmp_path):
    """kill -9 of the local pool alone, mid-run: status still shows the run running, a
    relaunch (as status would advise for a lost run) starts no second job and names the
    pid, a job started by hand is refused without touching the run, and the orphan
    finishes and exits with every metrics row once. The orphan is held with SIGSTOP while
    the others try (alive and holding its lock, however fast this machine is)."""
    from moco3.runfolder.joblock import holder

    args = ["ablation=none", "launcher=local", "wait=false", *LONG]
    started = _cli(args, tmp_path)
    assert started.returncode == 0, started.stderr
    run = tmp_path / "runs" / "none" / "baseline" / "seed=0"
    pool = int(read_json_rows(tmp_path / "runs" / "none" / "manifest.jsonl")[0]
               ["job_ids"][-1].rsplit(":", 1)[1])
    job = None
    try:
        _wait_for(lambda: holder(run) and (read_json(run / "status.json") or {}).get(
            "step", 0) >= 1, 240, "the job to train")
        job = int(holder(run).split()[1])  # "pid N on host H"
        os.kill(job, signal.SIGSTOP)
        os.kill(pool, signal.SIGKILL)  # the pool alone, not its process group
        _wait_for(lambda: not _alive(pool), 30, "the pool to die")
        assert _alive(job) and read_json(run / "status.json")["step"] < 80
        shown = subprocess.run([sys.executable, str(STATUS), f"runs_root={tmp_path / 'runs'}",
                                "ablation=none"], capture_output=True, text=True, timeout=120)
        row = next(x for x in shown.stdout.splitlines() if x.startswith("baseline/seed=0"))
        assert row.split()[1] == "running:pretrain", shown.stdout
        again = _cli(args, tmp_path)
        assert again.returncode == 0, again.stderr
        assert f"still trained by pid {job} on host" in again.stdout, again.stdout
        assert "nothing to submit" in again.stdout
        manifest = read_json_rows(tmp_path / "runs" / "none" / "manifest.jsonl")[0]
        assert len(manifest["job_ids"]) == 1  # no second pool, no second job
        second = subprocess.run([sys.executable, "-m", "moco3.experiments.job", str(run)],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"already being trained by pid {job} on host" in second.stderr
        assert read_json(run / "status.json")["state"] == "running"
        os.kill(job, signal.SIGCONT)
        _wait_for(lambda: not _alive(job), 240, "the orphaned job to finish and exit")
    finally:
        if job is not None and _alive(job):
            os.kill(job, signal.SIGKILL)
    assert read_json(run / "status.json")["state"] == "done"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, 81))  # every row once, in order
    assert holder(run) is None


def read_json_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# -- 2. a kill during any checkpoint write loses no milestone --------------------------------
def test_a_kill_during_each_checkpoint_write_keeps_every_milestone(tmp_path):
    """2 epochs of 8 steps, a milestone at epoch 1: three checkpoint writes (epoch_0001.pt
    and last.pt at step 8, last.pt at step 16). The job is killed with SIGKILL in the middle
    of each in turn, then resumed: the milestone is there, equal to the uninterrupted run's,
    and the run ends bit-identical."""
    over = {"train.knn_every": 0, "probe.enabled": False, "train.milestones": [1]}
    reference, ref_sha = run_folder(tmp_path, "reference", **over)
    assert run_job(reference, ref_sha, threads=1) == "done"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for write in (1, 2, 3):
        run, sha = run_folder(tmp_path, f"killed{write}", **over)
        script = textwrap.dedent(f"""
            import os, signal, torch
            real, n = torch.save, [0]
            def save(obj, f, *a, **k):
                n[0] += 1
                if n[0] == {write}:
                    f.write(b"partial"); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
                return real(obj, f, *a, **k)
            torch.save = save
            from moco3.job import run_job
            run_job({str(run)!r}, {sha!r}, threads=1)
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                              timeout=300, env=env)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert run_job(run, sha, threads=1) == "done"
        milestone = ckpt.milestone_path(run, 1)
        assert milestone.exists(), f"kill during write {write} lost epoch_0001.pt"
        a = ckpt.load(ckpt.milestone_path(reference, 1))["model"]
        b = ckpt.load(milestone)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert_same_run(reference, run)


# -- 3. a run name cannot leave the runs root -------------------------------------------------
@pytest.mark.parametrize("name", ["../../escape", "/tmp/moco3-escape-drill"])
def test_a_run_name_cannot_leave_the_runs_root(tmp_path, name):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    done = _cli(["runs_root=R", f"run_name={name}", *FAST], cwd, script=TRAIN)
    assert done.returncode == 2
    assert "would not be a folder inside the runs root" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _files(tmp_path) == [tmp_path / "a", cwd]  # nothing written, anywhere
    assert not Path("/tmp/moco3-escape-drill").exists()


# -- 4. the report survives every state a run can be in, and never half-writes ---------------
def _write_rows(path: Path, rows: list[dict], tail: str = "") -> None:
    from moco3.runfolder.rows import encode_row

    path.write_text("".join(encode_row(r) for r in rows) + tail)


def _runs_in_every_state(tmp_path: Path) -> Path:
    """A healthy run (trained for real) and copies of it turned into: diverged with NaN
    spike events (and nothing else logged for its group), empty metrics, still writing
    (a half-written last line)."""
    import shutil

    from moco3.runfolder.atomic import write_json

    root = tmp_path / "runs"
    healthy, sha = run_folder(root / "none", "baseline/seed=0",
                              **{"train.epochs": 1, "probe.enabled": False})
    assert run_job(healthy, sha, threads=1) == "done"
    rows = read_json_rows(healthy / "metrics.jsonl")

    def copy(seed: int, state: str, step: int) -> Path:
        run = root / "none" / f"baseline/seed={seed}"
        shutil.copytree(healthy, run, ignore=shutil.ignore_patterns("checkpoints", ".*"))
        status = read_json(run / "status.json")
        status.update(state=state, step=step, phase="pretrain")
        config = OmegaConf.load(run / "config.yaml")
        config.seed = config.meta.seed = seed
        config.meta.run_id = f"baseline/seed={seed}"
        OmegaConf.save(config, run / "config.yaml")
        write_json(run / "status.json", status)
        return run

    diverged = copy(1, "diverged", 6)
    nan = float("nan")
    _write_rows(diverged / "metrics.jsonl", [r for r in rows if r["step"] <= 4] + [
        {"kind": "event", "step": 5, "epoch": 1.25, "images_seen": 320, "event": "grad_spike",
         "group": "patch_embed", "value": nan, "reference": 1.0, "threshold": 3.0},
        {"kind": "event", "step": 6, "epoch": 1.5, "images_seen": 384, "event": "diverged",
         "value": nan}])
    summary = read_json(diverged / "summary.json")
    summary.update(state="diverged", diverged_step=6, knn_top1=None, final_loss=nan)
    write_json(diverged / "summary.json", summary)
    empty = copy(2, "running", 0)
    (empty / "metrics.jsonl").write_text("")
    (empty / "summary.json").unlink()
    writing = copy(3, "running", 2)
    (writing / "summary.json").unlink()
    _write_rows(writing / "metrics.jsonl", [r for r in rows if r["step"] <= 2],
                tail='{"kind": "train", "step": 3, "lo')
    return root


def test_the_report_survives_every_run_state_and_swaps_in_whole(tmp_path):
    root = _runs_in_every_state(tmp_path)
    out = tmp_path / "report"
    for extra in (["--no-cache"], [], []):  # without the cache, building it, reading it
        done = subprocess.run([sys.executable, str(REPORT), "--runs-root", str(root), "--out",
                               str(out), "--no-pdf", *extra], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    readme = (out / "README.md").read_text()
    assert "none/baseline/seed=1: diverged at step 6" in readme
    assert "none/baseline/seed=2: running (pretrain) at step 0; not finished" in readme
    assert "none/baseline/seed=3: running (pretrain) at step 2; not finished" in readme
    assert not list(out.glob(".building-*"))
    # A build killed half-way leaves the previous report as it was; the next build
    # removes what the killed one left.
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (root / "none" / "baseline" / "seed=1" / "summary.json").unlink()  # a change to rebuild
    build = subprocess.Popen([sys.executable, str(REPORT), "--runs-root", str(root), "--out",
                              str(out), "--no-pdf", "--no-cache"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: list(out.glob(".building-*/tables/*.md")) or build.poll() is not None,
                  120, "the build to write its tables")
        build.kill()
        build.wait(timeout=60)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode == -signal.SIGKILL  # killed mid-build (figures take seconds)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and not p.relative_to(out).parts[0].startswith(".building-")}
    assert after == before
    done = subprocess.run([sys.executable, str(REPORT), "--runs-root", str(root), "--out",
                           str(out), "--no-pdf"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.glob(".building-*"))


def test_a_failing_report_leaves_no_half_written_output(tmp_path, monkeypatch):
    from moco3.analysis import plots, report

    root = _runs_in_every_state(tmp_path)
    out = tmp_path / "report"

    def broken(*args, **kwargs):
        raise RuntimeError("the plotting library broke")

    monkeypatch.setattr(plots, "save", broken)
    with pytest.raises(RuntimeError):
        report.build_report(root, out, formats=("png",), use_cache=False)
    assert not out.exists()  # no tables/ and figures/ without a README
    keep = out / "notes.txt"  # a user's own file in the folder stays
    out.mkdir()
    keep.write_text("mine")
    with pytest.raises(RuntimeError):
        report.build_report(root, out, formats=("png",), use_cache=False)
    assert sorted(out.iterdir()) == [keep]
    monkeypatch.undo()
    report.build_report(root, out, formats=("png",), use_cache=False)
    assert (out / "README.md").exists() and keep.read_text() == "mine"


# -- 5. a full disk, for real: a small tmpfs as the runs root ---------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    """mount(size_kb) -> a fresh tmpfs of that size (root only); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size_kb: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        if os.geteuid() != 0:
            reason = "the full-disk drill mounts a small tmpfs, which needs root"
            print(f"skipped: {reason}")
            pytest.skip(reason)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if done.returncode:
            reason = f"cannot mount a tmpfs here ({done.stderr.strip()})"
            print(f"skipped: {reason}")
            pytest.skip(reason)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_a_real_full_disk_gives_the_sentence(tmp_path, small_tmpfs):
    """A 2 MiB tmpfs holds the first checkpoint (about 1.3 MB) but not a second one beside
    it: the job refuses the write before starting it, with the sentence; state failed, no
    temporary file, the first checkpoint intact."""
    disk = small_tmpfs(2048)
    run, sha = run_folder(disk, **{"train.ckpt_every_steps": 4, "train.knn_every": 0,
                                   "train.milestones": [], "probe.enabled": False})
    done = subprocess.run([sys.executable, "-m", "moco3.experiments.job", str(run),
                           "--config-sha256", sha, "--threads", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    status = read_json(run / "status.json")
    assert status["state"] == "failed"
    assert status["error"].startswith(f"DiskFullError: no space left on {disk} to write ")
    assert "MB free, the checkpoint needs about 1." in status["error"]
    assert not [p for p in _files(run) if ".tmp" in p.name]
    assert ckpt.load(ckpt.last_path(run))["step"] == 4


def test_torchs_zip_writer_failure_on_a_full_disk_gives_the_sentence(small_tmpfs):
    """When the estimate passes but the disk fills during the write (here: 2 MB of pickled
    Python data the tensor-size estimate does not count), torch's zip writer raises
    RuntimeError("... unexpected pos ..."), not ENOSPC; it becomes the same sentence."""
    from moco3.runfolder.atomic import DiskFullError

    disk = small_tmpfs(1024)
    with pytest.raises(DiskFullError, match=f"no space left on {disk} to write .*MB free, the "
                       "checkpoint needs about") as err:
        ckpt.save_atomic({"w": torch.zeros(4), "notes": "x" * 2**21}, disk / "last.pt")
    assert isinstance(err.value.__cause__, RuntimeError)
    assert list(disk.iterdir()) == []  # the temporary file removed


# -- 6. an empty ablation file is refused -----------------------------------------------------
def test_an_empty_ablation_file_is_refused(tmp_path):
    studies = tmp_path / "studies"
    (studies / "ablation").mkdir(parents=True)
    (studies / "ablation" / "empty.yaml").write_bytes(b"")
    work = tmp_path / "work"
    work.mkdir()
    done = _cli(["ablation=empty", f"conf_dir={studies}", "launcher=local", *FAST], work)
    assert done.returncode == 2
    assert "ablation empty has no factors, no grids and no overrides" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _files(work) == []


# -- 7. Hydra's composition errors: one sentence naming what is valid --------------------------
@pytest.mark.parametrize("arg,message", [
    ("ablation=nope", "ablation=nope is not a choice of ablation; valid: batch_size, "
                      "cls_token, head_bn, lr, momentum, negatives, none,"),
    ("scale=nope", "scale=nope is not a choice of scale; valid: mini, paper, small, tiny"),
    ("optim.lrr=1", "optim.lrr is not a config key; valid keys of optim: base_lr,"),
])
def test_composition_errors_are_one_sentence(tmp_path, arg, message):
    done = _cli([arg], tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _files(tmp_path) == []


def test_verbose_shows_hydras_full_composition_error(tmp_path):
    done = _cli(["ablation=nope", "--verbose"], tmp_path)
    assert done.returncode != 0
    assert "Could not find 'ablation/nope'" in done.stderr
    assert "Available options in 'ablation'" in done.stderr and "Traceback" in done.stderr


# -- 8. the resume command works from anywhere; status.py without a runs root ----------------
def test_ctrl_c_prints_a_resume_command_that_works_from_anywhere(tmp_path):
    """A waiting launch that is interrupted stops its runs with a checkpoint (preempted)
    and prints how to resume; that command, run from another directory, finishes them."""
    from moco3.runfolder.joblock import holder

    args = ["ablation=none", "launcher=local", *LONG]
    env = {k: v for k, v in os.environ.items() if k not in ("MOCO3_CONF_DIR",)}
    launch = subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    run = tmp_path / "runs" / "none" / "baseline" / "seed=0"
    try:
        _wait_for(lambda: holder(run) and (read_json(run / "status.json") or {}).get(
            "step", 0) >= 1 or launch.poll() is not None, 180, "the run to train")
        launch.send_signal(signal.SIGTERM)  # 1 of 80 steps done: it lands mid-run
        out, _ = launch.communicate(timeout=180)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert read_json(run / "status.json")["state"] == "preempted", out
    command = out.split("resume them with: ", 1)[1].splitlines()[0]
    assert command.startswith(f"cd {tmp_path} && ")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = subprocess.run(["bash", "-c", command], cwd=elsewhere, capture_output=True,
                           text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert read_json(run / "status.json")["state"] == "done"
    assert list(elsewhere.iterdir()) == []


def test_status_without_a_runs_root_exits_non_zero(tmp_path):
    done = subprocess.run([sys.executable, str(STATUS), f"runs_root={tmp_path / 'nope'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"no runs root at {tmp_path / 'nope'}" in done.stderr
    assert not (tmp_path / "nope").exists()
