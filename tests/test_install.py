"""`pip install .` gives working commands on PATH, from any directory, without the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from side_by_side import two_at_a_time

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("moco3-launch", "moco3-train", "moco3-status", "moco3-report", "moco3-export",
            "moco3-tensorboard")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed (not editable, no dependencies: they are this venv's) into a
    folder of its own, as `pip install .` lays it out."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--target", str(target), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def run(installed: Path, command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("MOCO3_RUNS_ROOT", None)
    return subprocess.run([str(installed / "bin" / command), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_command_is_installed_and_answers_help(installed, tmp_path):
    """Each its own help, naming itself as installed (not `python experiments/...`)."""
    helps = {}
    dones = two_at_a_time(lambda command: run(installed, command, "--help", cwd=tmp_path),
                          COMMANDS)
    for command, done in zip(COMMANDS, dones, strict=True):
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert done.stdout.strip(), command
        assert "python " not in done.stdout.split("\n\n")[0], (command, done.stdout[:300])
        helps[command] = done.stdout
    for command in ("moco3-status", "moco3-report", "moco3-export", "moco3-tensorboard"):
        assert helps[command].startswith(f"usage: {command} "), helps[command][:200]
        assert "--runs-root DIR" in helps[command]
    assert "retry_failed=true" in helps["moco3-launch"]
    assert "  moco3-launch ablation=patch_proj" in helps["moco3-launch"]
    assert "  moco3-train model.patch_embed=learned" in helps["moco3-train"]
    assert "Launch one of" not in helps["moco3-train"]


def test_the_installed_commands_work_outside_the_checkout(installed, tmp_path):
    launch = run(installed, "moco3-launch", "ablation=patch_proj", "dry_run=true",
                 "launcher=local", cwd=tmp_path)
    assert launch.returncode == 0, launch.stderr
    assert "6 runs; about" in launch.stdout
    status = run(installed, "moco3-status", cwd=tmp_path)
    assert status.returncode == 2 and "no runs root at" in status.stderr
    report = run(installed, "moco3-report", cwd=tmp_path)
    assert report.returncode == 2 and "does not exist" in report.stderr
    # The code that ran is the installed copy, not the checkout.
    where = subprocess.run([sys.executable, "-c", "import moco3.experiments, moco3.analysis, "
                            "moco3.runfolder; print(moco3.experiments.__file__, "
                            "moco3.analysis.__file__, moco3.runfolder.__file__, moco3.__path__)"],
                           env={**os.environ, "PYTHONPATH": str(installed)},
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(REPO) not in where.stdout and str(installed / "moco3") in where.stdout
    # Its code identity is the commit it was built from, recorded by setuptools-scm.
    identity = subprocess.run([sys.executable, "-c", "import json; from moco3.code_identity "
                               "import code_identity; print(json.dumps(code_identity()))"],
                              env={**os.environ, "PYTHONPATH": str(installed)},
                              capture_output=True, text=True, cwd=tmp_path)
    record = json.loads(identity.stdout)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if head:
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True).stdout
        assert record["code_source"] == "build" and head.startswith(record["git_commit"])
        assert len(record["git_commit"]) >= 7 and record["git_dirty"] == bool(dirty.strip())
    assert len(record["code_hash"]) == 64
    assert list(tmp_path.iterdir()) == []  # a dry run and status wrote nothing


def test_the_install_holds_every_source_file_under_moco3(installed):
    """site-packages/moco3/ holds moco3 and the three folders as moco3.experiments,
    moco3.analysis, moco3.runfolder - every module and config file of the checkout - and
    nothing under the generic top-level names."""
    for name in ("experiments", "analysis", "runfolder"):
        assert not (installed / name).exists(), name
        sources = {p.relative_to(REPO / name) for p in (REPO / name).rglob("*")
                   if p.suffix in (".py", ".yaml", ".md") and "__pycache__" not in p.parts}
        copied = {p.relative_to(installed / "moco3" / name)
                  for p in (installed / "moco3" / name).rglob("*") if p.suffix in
                  (".py", ".yaml", ".md") and "__pycache__" not in p.parts}
        assert sources and sources == copied, name
    ours = {p.name for p in (REPO / "moco3").glob("*.py")}
    assert ours <= {p.name for p in (installed / "moco3").glob("*.py")}
    # The same sources hash the same, laid out as a checkout or as an install.
    code = "from moco3.code_identity import source_hash; print(source_hash())"
    hashes = [subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                             capture_output=True, text=True, cwd=REPO / "tests").stdout
              for env in ({"PYTHONPATH": str(installed)}, {"PYTHONPATH": str(REPO)})]
    assert len(hashes[0].strip()) == 64 and hashes[0] == hashes[1]


FAST = ["train.epochs=1", "data.num_train=256", "data.num_val=128", "train.batch_size=64",
        "model.depth=1", "model.mlp_dim=256", "train.knn_every=2", "train.knn_memory=256",
        "train.knn_queries=128", "probe.epochs=1", "probe.batch_size=64",
        "train.precision=fp32"]


def test_the_installed_commands_run_from_a_folder_with_its_own_experiments(installed,
                                                                          tmp_path):
    """A research repository with top-level `experiments` and `analysis` packages of its
    own, on PYTHONPATH and as the working directory: the installed local pool and its job
    import moco3.experiments, never the user's, and the run is done."""
    for name in ("experiments", "analysis"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name} package was imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), str(tmp_path)])}
    for name in ("MOCO3_RUNS_ROOT", "MOCO3_CONF_DIR", "MOCO3_CLUSTER_PROFILE"):
        env.pop(name, None)
    done = subprocess.run([str(installed / "bin" / "moco3-launch"), "ablation=none",
                           "launcher=local", *FAST], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    status = json.loads((tmp_path / "runs/none/baseline/seed=0/status.json").read_text())
    assert status["state"] == "done"
