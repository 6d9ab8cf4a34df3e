"""experiments/launch.py, job.py, local_pool.py, rundir.py and status.py.

In-process tests use launcher=debug with moco3.train/probe replaced by fakes; subprocess
tests run the real commands (dry run, bad input, and short real runs at a shrunken tiny
scale). The full default grid is the `slow` test at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from side_by_side import two_at_a_time

import moco3.probe
import moco3.train
from moco3.config import RunConfig, load_run_config
from moco3.experiments import rundir
from moco3.experiments.grid import expand
from moco3.experiments.launch import CONF_DIR, hydra_argv, launch, resolve_launcher
from moco3.experiments.local_pool import Pool
from moco3.experiments.rundir import (
    LaunchError,
    decide,
    launch_lock,
    read_manifest,
    write_manifest,
    write_run,
)
from moco3.experiments.schema import register
from moco3.experiments.slurm_jobs import job_parameters, node_layout
from moco3.runfolder.atomic import read_json
from moco3.runlog import RunLog

register()

REPO = CONF_DIR.parents[1]
LAUNCH = REPO / "experiments" / "launch.py"
STATUS = REPO / "experiments" / "status.py"
# The tiny scale shrunk to seconds per run: 4 steps, a 1-block ViT, 1 probe epoch.
FAST = ["train.epochs=1", "data.num_train=256", "data.num_val=128", "train.batch_size=64",
        "model.depth=1", "model.mlp_dim=256", "train.knn_every=2", "train.knn_memory=256",
        "train.knn_queries=128", "probe.epochs=1", "probe.batch_size=64"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=overrides)


def _cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None,
         script: Path = LAUNCH) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    for name in ("MOCO3_CONF_DIR", "MOCO3_CLUSTER_PROFILE"):  # the developer's own
        if name not in (env or {}):
            full_env.pop(name, None)
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def _cli_at_once(calls: list[tuple[list[str], dict[str, Any]]], cwd: Path,
                 ) -> list[subprocess.CompletedProcess]:
    """`_cli(args, cwd, **kwargs)` for each call, two at a time, results in order: for
    independent invocations that only start, read and refuse or print."""
    return two_at_a_time(lambda call: _cli(call[0], cwd, **call[1]), calls)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


# -- fakes for the in-process (debug) launcher ------------------------------------------------
class FakeJob:
    """moco3.train.train / moco3.probe.probe stand-ins that write a finished run folder."""

    def __init__(self) -> None:
        self.trained: list[tuple[str, str]] = []
        self.probed: list[str] = []
        self.outcome = "done"

    def train(self, cfg, run_dir, **job):
        log = RunLog(Path(run_dir))
        log.set_state("running", step=0, total_steps=3)
        for step in (1, 2, 3):
            log.append({"kind": "train", "step": step, "loss": 1.0 / step})
        log.append({"kind": "knn", "step": 3, "knn_top1": 50.0})
        self.trained.append((cfg.meta.run_id, str(run_dir)))
        if self.outcome != "done":
            log.set_state(self.outcome, step=3)
            return self.outcome
        log.write_summary({"state": "done", "knn_top1": 50.0})
        log.set_state("running", step=3, phase="probe")
        return "done"

    def probe(self, cfg, run_dir, **job):
        log = RunLog(Path(run_dir))
        log.write_summary({"linear_top1": 42.0})
        log.set_state("done", phase="done")
        self.probed.append(cfg.meta.run_id)
        return 42.0


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(rundir, "code_changed", lambda run_dir: None)  # this checkout's state
    job = FakeJob()
    monkeypatch.setattr(moco3.train, "train", job.train)
    monkeypatch.setattr(moco3.probe, "probe", job.probe)
    return job


def _debug_launch(tmp_path: Path, ablation: str, extra: tuple[str, ...] = ()) -> int:
    cfg = _compose([f"ablation={ablation}", "launcher=debug", f"runs_root={tmp_path}/runs",
                    *extra])
    return launch(cfg, ablation, "tiny")


def test_debug_launch_writes_the_run_folders_then_runs_each_job(tmp_path, fake):
    assert _debug_launch(tmp_path, "predictor") == 0
    root = tmp_path / "runs" / "predictor"
    ids = ["predictor=true/seed=0", "predictor=false/seed=0"]
    assert [t[0] for t in fake.trained] == ids and fake.probed == ids
    manifest = read_manifest(root / "manifest.jsonl")
    assert list(manifest) == ids
    for run_id in ids:
        cfg = load_run_config(root / run_id / "config.yaml")
        assert cfg.meta.run_id == run_id and cfg.meta.ablation == "predictor"
        assert cfg.meta.scale == "tiny" and cfg.meta.config_hash == manifest[run_id][
            "config_hash"]
        assert cfg.meta.factors == {"predictor": run_id.split("=")[1].split("/")[0]}
        assert read_json(root / run_id / "status.json")["state"] == "done"
        assert manifest[run_id]["job_ids"][0].startswith("debug:")
        assert manifest[run_id]["factors"] == dict(cfg.meta.factors)
    assert cfg.model.predictor is False


def test_a_relaunch_skips_done_runs_and_retries_failed_ones_only_when_asked(tmp_path, fake,
                                                                           capsys, monkeypatch):
    assert _debug_launch(tmp_path, "head_bn") == 0
    root = tmp_path / "runs" / "head_bn"
    failed = root / "head_bn=false" / "seed=0"
    RunLog(failed).set_state("failed", step=2, error="RuntimeError: boom")
    fake.trained.clear()
    assert _debug_launch(tmp_path, "head_bn") == 1  # not finished: it failed
    out = capsys.readouterr().out
    assert fake.trained == [] and "failed: RuntimeError: boom; fix the cause" in out
    assert _debug_launch(tmp_path, "head_bn", ("retry_failed=true",)) == 0
    assert [t[0] for t in fake.trained] == ["head_bn=false/seed=0"]
    fake.trained.clear()
    RunLog(failed).set_state("failed", step=2, error="RuntimeError: boom")
    monkeypatch.setattr(rundir, "code_changed", lambda run_dir: "the code moved")
    assert _debug_launch(tmp_path, "head_bn") == 0  # new code: worth another try
    assert [t[0] for t in fake.trained] == ["head_bn=false/seed=0"]
    fake.trained.clear()
    assert _debug_launch(tmp_path, "head_bn") == 0
    assert fake.trained == []
    assert "nothing to submit" in capsys.readouterr().out
    assert len(read_manifest(root / "manifest.jsonl")["head_bn=false/seed=0"]["job_ids"]) == 3


def test_a_changed_config_is_refused_for_finished_runs(tmp_path, fake, capsys):
    assert _debug_launch(tmp_path, "predictor") == 0
    config = tmp_path / "runs" / "predictor" / "predictor=true" / "seed=0" / "config.yaml"
    before = config.read_text()
    fake.trained.clear()
    assert _debug_launch(tmp_path, "predictor", ("moco.tau=0.3",)) == 1
    out = capsys.readouterr().out
    assert "refused: predictor=true/seed=0: the config.yaml of a done run" in out
    assert "moco.tau: 0.3 -> 0.2" not in out and "moco.tau: 0.2 -> 0.3" in out
    assert fake.trained == [] and config.read_text() == before
    # Nothing is rewritten silently, not even a logging cadence.
    assert _debug_launch(tmp_path, "predictor", ("train.log_every=7",)) == 1
    assert "train.log_every: 5 -> 7" in capsys.readouterr().out
    assert config.read_text() == before


def test_a_preempted_run_is_resumed_and_a_diverged_one_is_a_result(tmp_path, fake):
    fake.outcome = "preempted"
    assert _debug_launch(tmp_path, "predictor") == 1  # not finished: nonzero
    assert fake.probed == []
    fake.outcome = "diverged"
    fake.trained.clear()
    assert _debug_launch(tmp_path, "predictor") == 0
    assert len(fake.trained) == 2 and fake.probed == []
    fake.trained.clear()
    assert _debug_launch(tmp_path, "predictor") == 0
    assert fake.trained == []  # diverged is final


# -- rundir -----------------------------------------------------------------------------------
def _planned(ablation: str = "predictor", extra: tuple[str, ...] = ()):
    return expand(_compose([f"ablation={ablation}", *extra]), ablation, "tiny")


def test_decide_covers_every_state(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "code_changed", lambda run_dir: None)
    run = _planned()[0]
    folder = tmp_path / "r"
    never = lambda job: False  # noqa: E731
    always = lambda job: True  # noqa: E731
    assert decide(run, folder, None, never).reason == "new"
    write_run(folder, run.config)
    log = RunLog(folder)
    for state in ("pending", "running"):
        log.set_state(state, step=5)
        assert decide(run, folder, "12_3", always).action == "skip"
        assert decide(run, folder, "12_3", never).action == "submit"
    log.set_state("preempted", step=5)
    assert decide(run, folder, "12_3", never).reason == "resume (preempted at step 5)"
    log.set_state("failed", step=5, error="ValueError: x")
    assert decide(run, folder, "12_3", never).action == "skip"
    assert decide(run, folder, "12_3", never, retry_failed=True).action == "submit"
    for state in ("done", "diverged"):
        log.set_state(state)
        assert decide(run, folder, None, never).action == "skip"
    other = _planned(extra=("moco.tau=0.5",))[0]
    refused = decide(other, folder, None, never)
    assert refused.action == "refuse" and "moco.tau: 0.2 -> 0.5" in refused.reason
    log.set_state("failed")
    (folder / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    assert decide(other, folder, None, never).action == "refuse"  # trained: config fixed
    (folder / "metrics.jsonl").unlink()
    never_trained = decide(other, folder, None, never)  # failed in set-up: may be rewritten
    assert never_trained.action == "submit" and never_trained.rewrite


def test_the_lock_refuses_a_second_launch(tmp_path):
    with launch_lock(tmp_path, "x"), pytest.raises(LaunchError, match="another launch of "
                                                                       "ablation x"):
        with launch_lock(tmp_path, "x"):
            pass
    with launch_lock(tmp_path, "x"):  # released
        pass


def test_the_manifest_keeps_one_line_per_run_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, {"a": {"run_id": "a", "job_ids": ["1"]},
                          "b": {"run_id": "b", "job_ids": []}})
    with open(path, "a") as f:
        f.write('{"run_id": "c", "job_')
    assert list(read_manifest(path)) == ["a", "b"]


def test_hydra_argv_adds_conf_dirs_to_the_search_path(tmp_path):
    assert hydra_argv(["ablation=x"], {}) == ["ablation=x"]
    out = hydra_argv(["ablation=x", f"conf_dir={tmp_path}"], {"MOCO3_CONF_DIR": str(tmp_path)})
    assert out == ["ablation=x", f"hydra.searchpath=[file://{tmp_path},file://{tmp_path}]"]
    with pytest.raises(LaunchError, match="is not a directory"):
        hydra_argv([f"conf_dir={tmp_path}/nope"], {})


def test_the_cluster_profile_is_merged_and_the_command_line_wins(tmp_path, monkeypatch):
    profile = tmp_path / "cluster.yaml"
    profile.write_text("partition: gpu\naccount: lab\ngpus_per_node: 4\nsetup: [module load x]\n")
    overrides = ["launcher=slurm", "launcher.partition=short"]
    cfg = _compose([*overrides, f"launcher.profile={profile}"])
    launcher = resolve_launcher(cfg, [*overrides, f"launcher.profile={profile}"], print)
    assert (launcher.kind, launcher.partition, launcher.account) == ("slurm", "short", "lab")
    assert launcher.gpus_per_node == 4 and list(launcher.setup) == ["module load x"]
    params = job_parameters({"gpus": 8, "cpus": None, "timeout_min": None, "mem_gb": 100},
                            launcher, "moco3-x")
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert (params["partition"], params["account"], params["mem"]) == ("short", "lab", "100GB")
    assert params["time"] == launcher.timeout_min and params["setup"] == ["module load x"]
    cpu = job_parameters({"gpus": 0, "cpus": 1, "timeout_min": 5, "mem_gb": None}, launcher, "j")
    assert (cpu["ntasks_per_node"], cpu["cpus_per_task"], cpu["time"]) == (1, 1, 5)
    long = job_parameters({"gpus": 0, "cpus": 1, "timeout_min": 10**5, "mem_gb": None},
                          launcher, "j")
    assert long["time"] == launcher.timeout_min  # the profile's limit caps a run's own
    assert "gpus_per_node" not in cpu
    with pytest.raises(LaunchError, match="does not split evenly"):
        job_parameters({"gpus": 5, "cpus": None, "timeout_min": None, "mem_gb": None},
                       launcher, "j")
    (tmp_path / "bad.yaml").write_text("partitoin: gpu\n")
    monkeypatch.setenv("MOCO3_CLUSTER_PROFILE", str(tmp_path / "bad.yaml"))
    with pytest.raises(LaunchError, match="partitoin"):
        resolve_launcher(_compose(["launcher=slurm"]), ["launcher=slurm"], print)


def test_resources_nodes_sets_the_slurm_layout():
    launcher = _compose(["launcher=slurm"]).launcher  # gpus_per_node 8
    cpu = {"gpus": 0, "cpus": 1, "nodes": 2, "timeout_min": None, "mem_gb": 1}
    params = job_parameters(cpu, launcher, "j")
    assert (params["nodes"], params["ntasks_per_node"], params["cpus_per_task"]) == (2, 1, 1)
    assert "gpus_per_node" not in params and params["mem"] == "1GB"
    assert node_layout({"gpus": 0, "nodes": None}, launcher) == (1, 1)
    assert node_layout({"gpus": 16, "nodes": None}, launcher) == (2, 8)
    assert node_layout({"gpus": 8, "nodes": 4}, launcher) == (4, 2)  # spread out on purpose
    with pytest.raises(LaunchError, match="8 GPUs per node, more than launcher.gpus_per_node=4"):
        node_layout({"gpus": 16, "nodes": 2}, _compose(["launcher=slurm",
                                                        "launcher.gpus_per_node=4"]).launcher)
    with pytest.raises(LaunchError, match="does not split evenly over 3 nodes"):
        node_layout({"gpus": 8, "nodes": 3}, launcher)
    with pytest.raises(LaunchError, match="resources.nodes=0 is not valid"):
        node_layout({"gpus": 0, "nodes": 0}, launcher)


@pytest.mark.parametrize("args,message", [
    (["launcher=local", "resources.nodes=2"],
     "asks for resources.nodes=2: only launcher=slurm spans nodes"),
    (["launcher=slurm", "resources.nodes=3", "train.batch_size=64"],
     "train.batch_size=64 does not split evenly over its 3 processes; use a multiple of 3"),
])
def test_a_node_layout_the_job_cannot_get_is_refused_before_anything_is_written(
        tmp_path, capsys, args, message):
    cfg = _compose(["ablation=none", f"runs_root={tmp_path}/runs", *args])
    assert launch(cfg, "none", "tiny") == 2
    assert message in capsys.readouterr().err
    assert _files(tmp_path) == []


def test_the_dry_run_nodes_column_is_what_the_job_gets(tmp_path):
    said: list[str] = []
    for nodes in ("null", "2"):
        cfg = _compose(["ablation=none", "launcher=slurm", f"resources.nodes={nodes}",
                        f"runs_root={tmp_path}/runs", "dry_run=true"])
        said.clear()
        assert launch(cfg, "none", "tiny", say=said.append) == 0
        lines = "\n".join(said).splitlines()
        header = next(line for line in lines if line.startswith("run ")).split()
        row = next(line for line in lines if line.startswith("baseline/seed=0")).split()
        expected = job_parameters(OmegaConf.to_container(cfg.resources), cfg.launcher, "j")
        assert row[header.index("nodes")] == str(expected["nodes"]) == ("1" if nodes == "null"
                                                                        else nodes)
    assert _files(tmp_path) == []


def test_the_worked_cluster_profile_of_the_readme_composes(monkeypatch):
    """docs/cluster/example-site.yaml, the README's quickstart profile, as
    $MOCO3_CLUSTER_PROFILE: a paper-scale patch_proj run gets its nodes on that site."""
    profile = REPO / "docs" / "cluster" / "example-site.yaml"
    assert str(profile.relative_to(REPO)) in (REPO / "README.md").read_text()
    monkeypatch.setenv("MOCO3_CLUSTER_PROFILE", str(profile))
    cfg = _compose(["ablation=patch_proj", "scale=paper", "launcher=slurm"])
    launcher = resolve_launcher(cfg, ["launcher=slurm"], print)
    run = expand(cfg, "patch_proj", "paper")[0]
    params = job_parameters(run.resources, launcher, "moco3-patch_proj")
    assert (params["partition"], params["account"], params["mem"]) == ("gpu", "ssl-lab",
                                                                       "480GB")
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (
        run.resources["gpus"] // 8, 8, 8)
    assert params["setup"] == ["module load cuda/12.4"] and params["time"] == 2880


def test_the_local_pool_bounds_parallelism(tmp_path, monkeypatch):
    marker = tmp_path / "live"
    marker.mkdir()
    script = ("import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); "
              "p = d / str(os.getpid()); p.touch(); "
              "n = len(list(d.iterdir())); time.sleep(0.3); p.unlink(); "
              "open(sys.argv[2], 'a').write(f'{n} {os.environ[\"OMP_NUM_THREADS\"]}\\n')")
    report = tmp_path / "report"
    runs = [{"run_id": f"r{i}", "run_dir": str(tmp_path / f"r{i}"), "gpus": 0, "threads": 3}
            for i in range(5)]
    pool = Pool(runs, parallel=2, launch_id="t")
    monkeypatch.setattr(pool, "_command", lambda run: [sys.executable, "-c", script,
                                                       str(marker), str(report)])
    assert pool.run(poll_s=0.05) == 0
    lines = report.read_text().split()
    assert len(lines) == 10 and max(int(n) for n in lines[::2]) <= 2
    assert set(lines[1::2]) == {"3"}
    assert all((tmp_path / f"r{i}" / "logs" / "t.log").exists() for i in range(5))


# -- the real command -------------------------------------------------------------------------
def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path):
    done = _cli(["ablation=patch_proj", "launcher=local", "dry_run=true"], tmp_path)
    assert done.returncode == 0, done.stderr
    for run_id in ("patch_embed=learned,lr=0.5e-4/seed=0", "patch_embed=frozen,lr=1.5e-4/seed=0"):
        assert run_id in done.stdout
    assert "6 runs; about" in done.stdout and "GPU-hours" in done.stdout
    assert "nothing written, nothing submitted" in done.stdout
    assert _files(tmp_path) == []
    paper = _cli(["ablation=batch_size", "scale=paper", "launcher=slurm", "dry_run=true"],
                 tmp_path)
    assert paper.returncode == 0, paper.stderr
    row = next(line for line in paper.stdout.splitlines() if line.startswith("batch_size=6144"))
    assert row.split()[3:6] == ["96", "12", "6144"]  # gpus, nodes, batch
    assert _files(tmp_path) == []


# Every spelling of only= that README.md and --help document, through the real command.
@pytest.mark.parametrize("only,expected", [
    ("only=lr=1.5e-4", {"patch_embed=learned,lr=1.5e-4/seed=0",
                        "patch_embed=frozen,lr=1.5e-4/seed=0"}),
    ("only=patch_embed=frozen,lr=1.5e-4/seed=0", {"patch_embed=frozen,lr=1.5e-4/seed=0"}),
    ("only=[lr=1.5e-4,frozen]", {"patch_embed=learned,lr=1.5e-4/seed=0",
                                 "patch_embed=frozen,lr=1.5e-4/seed=0",
                                 "patch_embed=frozen,lr=0.5e-4/seed=0",
                                 "patch_embed=frozen,lr=1.0e-4/seed=0"}),
    ("only=['patch_embed=learned,lr=0.5e-4']", {"patch_embed=learned,lr=0.5e-4/seed=0"}),
])
def test_only_takes_the_documented_spellings(tmp_path, only, expected):
    done = _cli(["ablation=patch_proj", "launcher=local", "dry_run=true", only], tmp_path)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if "/seed=" in line}
    assert listed == expected
    assert f"{len(expected)} runs; about" in done.stdout
    assert _files(tmp_path) == []


def test_show_prints_the_config_yaml_a_launch_writes_and_writes_nothing(tmp_path, fake):
    extra = ("model.depth=2", "optim.base_lr=2e-3")
    assert _debug_launch(tmp_path, "patch_proj", extra) == 0
    run_id = "patch_embed=frozen,lr=1.5e-4/seed=0"
    written = (tmp_path / "runs" / "patch_proj" / run_id / "config.yaml").read_text()
    before = _files(tmp_path)
    shown = _cli(["ablation=patch_proj", f"runs_root={tmp_path}/runs", *extra,
                  f"show={run_id}"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == written
    # a text found in exactly one run id picks it; the level's value is in the config
    short = _cli(["ablation=patch_proj", *extra, "show=frozen,lr=1.5e-4"], tmp_path)
    assert short.stdout == written and "patch_embed: frozen" in written
    several = _cli(["ablation=patch_proj", "show=frozen"], tmp_path)
    assert several.returncode == 2 and "show=frozen matches several runs" in several.stderr
    assert _files(tmp_path) == before


def test_train_show_prints_the_config_of_run_name(tmp_path):
    done = _cli(["model.depth=2", "show=mine"], tmp_path, script=REPO / "experiments" / "train.py")
    assert done.returncode == 0, done.stderr
    cfg = OmegaConf.create(done.stdout)
    assert cfg.meta.run_id == "mine" and cfg.model.depth == 2 and cfg.meta.ablation == "train"
    assert _files(tmp_path) == []


def test_the_ladder_pages_only_picks_its_lr_grid(tmp_path):
    """The committed 5-seed ladder page ran `only=batch_size=2048,`: the seven lrs at batch
    2048 and none of the batch grid (whose batch 4096 / 6144 / 8192 runs it must not match)."""
    done = _cli(["ablation=stability_ladder", "scale=mini", "launcher=local", "dry_run=true",
                 "seeds=[0]", "only=batch_size=2048,"], tmp_path)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if "/seed=" in line}
    lrs = ["1.5e-4", "3.0e-4", "6.0e-4", "1.2e-3", "2.4e-3", "4.8e-3", "9.6e-3"]
    assert listed == {f"batch_size=2048,lr={lr}/seed=0" for lr in lrs}
    assert _files(tmp_path) == []


def test_the_only_spellings_in_the_docs_are_the_tested_ones():
    documented = {"only=lr=1.5e-4", "only=[lr=1.5e-4,seed=0]", "only=batch_size=2048,"}
    for path in (REPO / "README.md", CONF_DIR / "hydra" / "help" / "launch.yaml"):
        text = path.read_text()
        found = {w.strip("`,.;:()") for w in text.split() if w.strip("`(").startswith("only=")}
        assert found and found <= {d.strip("`,.;:()") for d in documented}, (path, found)
    for form in documented:
        assert hydra_argv([form])[0].startswith("only=['")


@pytest.mark.parametrize("args,env,message", [
    (["ablation=nope"], {}, "ablation=nope is not a choice of ablation; valid: batch_size,"),
    (["model.foo=1"], {}, "model.foo is not a config key; valid keys of model: arch,"),
    (["train.epochs=ten"], {}, "could not be converted to Integer"),
    (["scale=small", "launcher=local"], {"MOCO3_DATA": "/nonexistent"},
     "cifar10 not found at /nonexistent/cifar10/cifar-10-batches-py"),
    (["conf_dir=/nonexistent"], {}, "conf_dir /nonexistent is not a directory"),
    (["launcher=local", "resources.gpus=4"], {}, "runs need 4 GPUs each"),
    (["launcher=local", "only=[nope]"], {}, "only=['nope'] matches no run"),
    (["launcher=local", "only=[a,]"], {}, "an empty item would match every run"),
    (["-m", "ablation=lr,momentum", "dry_run=true"], {}, "-m/--multirun is not supported"),
    (["+foo=1", "dry_run=true"], {}, "unknown top-level key(s) foo"),
    (["~only"], {}, "~only: launch.py does not delete keys"),
    (["ablation=pos_embed", "model=resnet50", "dry_run=true"], {},
     "varies model.pos_embed, which cannot apply to model.arch=resnet50"),
    (["runs_root=/etc/hostname"], {}, "runs_root /etc/hostname is a file, not a folder"),
])
def test_bad_input_gets_one_sentence_and_writes_nothing(tmp_path, args, env, message):
    done = _cli(args, tmp_path, env=env)
    assert done.returncode != 0
    assert message in done.stderr
    assert _files(tmp_path) == []


def test_every_command_has_its_own_help_naming_it_as_invoked(tmp_path):
    train = REPO / "experiments" / "train.py"
    expected = {LAUNCH: "retry_failed=true", STATUS: "--runs-root",
                REPO / "analysis" / "report.py": "--runs-root", train: "run_name=NAME"}
    dones = _cli_at_once([(["--help"], {"script": script}) for script in expected], tmp_path)
    for (script, text), done in zip(expected.items(), dones, strict=True):
        assert done.returncode == 0 and text in done.stdout, (script, done.stderr)
        assert f"python {script}" in done.stdout  # the path as typed, not another command's
    helps = {script: done.stdout for script, done in zip(expected, dones, strict=True)}
    assert "Train one run here" in helps[train] and "Launch one of" not in helps[train]
    assert "Launch one of" in helps[LAUNCH] and "Train one run here" not in helps[LAUNCH]
    for module in ("moco3.tensorboard", "moco3.export"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: python -m {module} ")
        assert "--runs-root" in done.stdout
    assert _files(tmp_path) == []


def test_every_command_takes_the_runs_root_the_same_way(tmp_path):
    """`--runs-root DIR` and `runs_root=DIR` mean the same to every command."""
    missing = tmp_path / "nope"
    afile = tmp_path / "afile"
    afile.write_text("")
    commands = [
        (STATUS, [], f"no runs root at {missing}"),
        (REPO / "analysis" / "report.py", [], f"The runs root '{missing}' does not exist"),
        (REPO / "moco3" / "tensorboard.py", [], f"{missing} is not a folder"),
        (REPO / "moco3" / "export.py", ["a/seed=0", "--format", "timm"],
         f"{missing}/a/seed=0 has no config.yaml"),
    ]
    roots = (["--runs-root", str(missing)], [f"runs_root={missing}"])
    calls = [([*args, *root], {"script": script, "timeout": 120})
             for script, args, _ in commands for root in roots]
    for (args, kwargs), done in zip(calls, _cli_at_once(calls, tmp_path), strict=True):
        message = next(m for script, _, m in commands if script == kwargs["script"])
        assert message in done.stdout + done.stderr, (kwargs["script"], args, done.stderr)
    calls = [(["model.depth=1", *root], {"script": script})
             for script in (LAUNCH, REPO / "experiments" / "train.py")
             for root in (["--runs-root", str(afile)], [f"runs_root={afile}"])]
    for (args, kwargs), done in zip(calls, _cli_at_once(calls, tmp_path), strict=True):
        assert done.returncode == 2, (kwargs["script"], args, done.stderr)
        assert f"runs_root {afile} is a file, not a folder" in done.stderr, done.stderr
    assert [p.name for p in _files(tmp_path)] == ["afile"]


def test_an_unknown_ablation_lists_the_available_ones(tmp_path):
    done = _cli(["ablation=nope"], tmp_path)
    options = done.stderr.split("valid: ", 1)[1].split(" (", 1)[0].split(", ")
    for name in ("batch_size", "patch_proj", "momentum", "negatives", "none"):
        assert name in options


def test_a_launch_is_refused_while_another_holds_the_lock(tmp_path):
    directory = tmp_path / "runs" / "predictor"
    with launch_lock(directory, "predictor"):
        done = _cli(["ablation=predictor", "launcher=local", "runs_root=runs", *FAST], tmp_path)
    assert done.returncode == 2
    assert "another launch of ablation predictor is submitting" in done.stderr
    assert [p.name for p in _files(tmp_path / "runs")] == ["predictor", ".launch.lock"]


def test_a_users_study_in_its_own_directory_runs_with_no_code_change(tmp_path):
    studies = tmp_path / "studies"
    (studies / "ablation").mkdir(parents=True)
    (studies / "ablation" / "temperature.yaml").write_text(
        '# tau sweep\nreproduces: "not in the paper"\nseeds: [0]\nfactors:\n  tau:\n'
        '    "0.1": {moco.tau: 0.1}\n    "0.5": {moco.tau: 0.5}\n')
    args = ["ablation=temperature", f"conf_dir={studies}", "launcher=local", *FAST]
    done = _cli(args, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    root = tmp_path / "runs" / "temperature"
    for tau in ("0.1", "0.5"):
        run = root / f"tau={tau}" / "seed=0"
        assert read_json(run / "status.json")["state"] == "done"
        summary = read_json(run / "summary.json")
        assert summary["linear_top1"] is not None and summary["knn_top1"] is not None
        assert load_run_config(run / "config.yaml").moco.tau == float(tau)
        assert read_json(run / "status.json")["threads"] == 1  # 2 cores, 2 runs
    again = _cli(args, tmp_path)
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    status = _cli(["ablation=temperature"], tmp_path, script=STATUS)
    assert status.returncode == 0
    assert "tau=0.1/seed=0" in status.stdout and "2 done" in status.stdout


def test_wait_false_returns_at_once_and_a_relaunch_leaves_active_runs_alone(tmp_path):
    args = ["ablation=none", "launcher=local", "wait=false", *FAST]
    start = time.monotonic()
    first = _cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert time.monotonic() - start < 30
    second = _cli(args, tmp_path)  # the pool of the first still holds the run
    assert second.returncode == 0, second.stderr
    assert "skipped 1 run(s): baseline/seed=0 (" in second.stdout
    assert "nothing to submit" in second.stdout
    run = tmp_path / "runs" / "none" / "baseline" / "seed=0"
    deadline = time.monotonic() + 240
    while (read_json(run / "status.json") or {}).get("state") != "done":
        assert time.monotonic() < deadline, (run / "status.json").read_text()
        time.sleep(1)
    manifest = read_manifest(tmp_path / "runs" / "none" / "manifest.jsonl")
    assert len(manifest["baseline/seed=0"]["job_ids"]) == 1
    status = _cli(["ablation=none"], tmp_path, script=STATUS)
    assert "baseline/seed=0  done" in status.stdout


def test_a_test_that_gives_up_on_a_launch_ends_its_pool_and_runs(tmp_path):
    from conftest import end_local_pools

    done = _cli(["ablation=predictor", "launcher=local", "wait=false", *FAST,
                 "train.epochs=50"], tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "runs" / "predictor" / "manifest.jsonl")
    pool = int(next(iter(manifest.values()))["job_ids"][-1].rsplit(":", 1)[1])
    runs = [tmp_path / "runs" / "predictor" / run_id for run_id in manifest]
    deadline = time.monotonic() + 120
    while not any((read_json(r / "status.json") or {}).get("state") == "running" for r in runs):
        assert time.monotonic() < deadline, "no run started"
        time.sleep(0.5)
    assert end_local_pools(tmp_path / "runs") == [pool]
    deadline = time.monotonic() + 30
    while _living_members(pool):  # the pool and every run of its group are gone
        assert time.monotonic() < deadline, _living_members(pool)
        time.sleep(0.5)


def _living_members(pgid: int) -> list[int]:
    """Processes of a process group that are not dead (zombies await a reaper: dead)."""
    alive = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(proc.name))
    return alive


def test_status_marks_a_run_whose_job_is_gone_as_lost(tmp_path):
    root = tmp_path / "runs" / "x"
    run = root / "a=1" / "seed=0"
    write_run(run, OmegaConf.structured(RunConfig))
    RunLog(run).set_state("running", step=3, total_steps=10)
    write_manifest(root / "manifest.jsonl", {"a=1/seed=0": {
        "run_id": "a=1/seed=0", "job_ids": ["local:nohost:1"]}})
    (run / "metrics.jsonl").write_text('{"kind": "knn", "step": 2, "knn_top1": 12.5}\n'
                                       '{"kind": "knn", "step": 3, "knn_')
    done = _cli(["ablation=x"], tmp_path, script=STATUS)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("a=1/seed=0"))
    assert line.split()[1:5] == ["lost", "3/10", "12.5", "-"]
    missing = _cli(["ablation=y"], tmp_path, script=STATUS)
    assert missing.returncode == 1 and "no runs of ablation y" in missing.stderr


@pytest.mark.slow
def test_the_default_patch_proj_grid_runs_to_the_end(patch_proj_grid):
    """The README's main command, at the default tiny scale, on this machine."""
    cwd, done = patch_proj_grid
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = cwd / "runs" / "patch_proj"
    runs = [p.parent for p in root.glob("*/seed=0/config.yaml")]
    assert len(runs) == 6
    for run in runs:
        summary = read_json(run / "summary.json")
        assert read_json(run / "status.json")["state"] == "done"
        assert summary["linear_top1"] is not None
