"""moco3's import names do not collide with a user's own packages, and a job that cannot
start says why in its run folder - through the real launch command, from a user's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moco3.runfolder.atomic import read_json

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "experiments" / "launch.py"
STATUS = REPO / "experiments" / "status.py"
FAST = ["train.epochs=1", "data.num_train=256", "data.num_val=128", "train.batch_size=64",
        "model.depth=1", "model.mlp_dim=256", "train.knn_every=2", "train.knn_memory=256",
        "train.knn_queries=128", "probe.epochs=1", "probe.batch_size=64"]
RUN = Path("runs") / "none" / "baseline" / "seed=0"


def _launch(cwd: Path, pythonpath: Path | None = None, *extra: str,
            script: Path = LAUNCH) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MOCO3_CONF_DIR", "MOCO3_CLUSTER_PROFILE", "MOCO3_RUNS_ROOT")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    args = [*extra] if script != LAUNCH else ["ablation=none", "scale=tiny", "launcher=local",
                                              "train.precision=fp32", *FAST, *extra]
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _user_folder(tmp_path: Path) -> Path:
    """A research repository of the user's own: top-level `experiments` and `analysis`
    packages that fail loudly if anything of moco3's imports them."""
    for name in ("experiments", "analysis"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name} package was imported')\n")
    return tmp_path


def test_a_launch_from_a_folder_with_its_own_experiments_and_analysis(tmp_path):
    """The folder is the working directory (first on sys.path of the pool and its jobs,
    which run with -m) and on PYTHONPATH (the launcher's and everyone's): the run trains,
    is probed, and the status and report commands read it."""
    user = _user_folder(tmp_path)
    done = _launch(user, user)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert read_json(user / RUN / "status.json")["state"] == "done"
    status = _launch(user, user, "ablation=none", script=STATUS)
    assert status.returncode == 0 and "baseline/seed=0  done" in status.stdout, status.stderr
    env = {**os.environ, "PYTHONPATH": str(user)}
    report = subprocess.run([sys.executable, "-m", "moco3.analysis.report", "--runs-root",
                             "runs", "--out", "report"], cwd=user, env=env,
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (user / "report" / "README.md").is_file()


def _failed(run: Path) -> tuple[str, str]:
    """status.json's error of a failed run, and the text of its logs/."""
    status = read_json(run / "status.json")
    assert status["state"] == "failed", status
    logs = "".join(p.read_text() for p in sorted((run / "logs").glob("*.log")))
    return status["error"], logs


# Each breaks a different stage for real, with a file of the user's own that shadows a
# module of the same name - one the launcher itself never imports:
#   json.py in the launch folder: the local pool (python -m, the folder first on sys.path)
#     cannot read its plan, so it dies before it starts any job;
#   submitit.py in the launch folder: the job's process cannot import its entry point;
#   omegaconf.py in the launch folder: the entry runs but cannot import the job's code;
#   timm.py on PYTHONPATH: the job runs and records its own failure to build the model.
BREAKAGES = {
    "the_pool": ({"json.py": "# a user's script, named after what it writes\n"}, False,
                 "the local pool could not start: AttributeError: ",
                 "module 'json' has no attribute 'loads'"),
    "the_job_entry": ({"submitit.py": "from my_lab_tools import sweep  # a user's script\n"},
                      False, "the job could not start: ModuleNotFoundError: ",
                      "No module named 'my_lab_tools'"),
    "the_job_code": ({"omegaconf.py": "# a user's notes on omegaconf\n"}, False,
                     "the job could not start: ImportError: ",
                     "cannot import name 'DictConfig' from 'omegaconf'"),
    "the_training_code": ({"shadow/timm.py": "# a user's notes on timm\n"}, True,
                          "ModuleNotFoundError: ",
                          "No module named 'timm.layers'; 'timm' is not a package"),
}


@pytest.mark.parametrize("stage", sorted(BREAKAGES))
def test_a_job_that_cannot_start_says_why_in_its_run_folder(tmp_path, stage):
    """status.json `failed` with the real error (not `pending`, then `lost`), the output
    in the run's logs/, the launch and `status` saying so."""
    files, on_pythonpath, prefix, reason = BREAKAGES[stage]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    done = _launch(tmp_path, tmp_path / "shadow" if on_pythonpath else None)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / RUN
    error, logs = _failed(run)
    assert error.startswith(prefix) and reason in error, error
    assert reason in logs, logs[-2000:]
    assert f"baseline/seed=0: failed ({error})" in done.stdout
    status = _launch(tmp_path, None, "ablation=none", script=STATUS)
    assert "baseline/seed=0  failed" in status.stdout and error in status.stdout
    assert "lost" not in status.stdout
