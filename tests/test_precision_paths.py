"""The precision decision through the real commands, under both answers of the CPU check.

MOCO3_CPU_FAST_BF16 (moco3.precision's testing aid) makes the CPU answer "fast bf16" or
"no fast bf16" whatever its flags say, in the command and every process it starts. Each test
here runs once per answer, so the paths that carry auto's choice (the run folder, status.py,
the report's provenance section) are exercised on every machine, whichever kind it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moco3.precision import FORCE_FAST_BF16_ENV

REPO = Path(__file__).resolve().parents[1]
# The smallest run that still writes every record: 2 steps of a one-block ViT. In bf16 on a
# CPU without native bf16 each step is emulated (10-70x fp32), so the run stays this small.
TINY = ["train.epochs=1", "data.num_train=64", "data.num_val=64", "train.batch_size=32",
        "model.depth=1", "model.mlp_dim=128", "train.knn_every=0", "train.knn_memory=64",
        "train.knn_queries=64", "probe.enabled=false", "train.precision=auto"]


@pytest.fixture(scope="module", params=[("1", "bf16"), ("0", "fp32")],
                ids=["fast-bf16", "no-fast-bf16"])
def forced_run(request, tmp_path_factory) -> tuple[Path, dict[str, str], str, str]:
    """One run trained by `python experiments/train.py` under a forced answer. Returns the
    runs root, the environment, the forced answer and the precision auto must pick."""
    answer, expected = request.param
    cwd = tmp_path_factory.mktemp(f"forced_{answer}")
    env = {**os.environ, FORCE_FAST_BF16_ENV: answer}
    for key in ("MOCO3_CONF_DIR", "MOCO3_RUNS_ROOT", "MOCO3_CLUSTER_PROFILE"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"),
                           "run_name=forced", "launcher=local", *TINY],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "runs", env, answer, expected


def test_the_run_folder_records_autos_choice(forced_run) -> None:
    runs, _, answer, expected = forced_run
    run = runs / "train" / "forced"
    assert json.loads((run / "status.json").read_text())["precision"] == expected
    assert json.loads((run / "summary.json").read_text())["precision"] == expected
    env_records = json.loads((run / "env.json").read_text())  # one record per start
    # The forced answer is named beside the CPU kind, so it cannot pass for the hardware's.
    assert env_records[-1]["cpu_capability"].endswith(f"({FORCE_FAST_BF16_ENV}={answer})")


def test_status_shows_autos_choice(forced_run) -> None:
    runs, env, _, expected = forced_run
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "status.py"),
                           "--runs-root", str(runs)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["run"])
    header, row = lines[at].split(), lines[at + 1].split()
    assert "precision" in header and row[header.index("precision")] == expected, done.stdout


def test_report_provenance_names_the_choice_and_the_answer(forced_run, tmp_path) -> None:
    runs, env, answer, expected = forced_run
    done = subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), "--runs-root",
                           str(runs), "--out", str(tmp_path / "report"), "--no-pdf"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    readme = (tmp_path / "report" / "README.md").read_text()
    provenance = readme.split("## Provenance", 1)[1] if "## Provenance" in readme else readme
    assert f"({FORCE_FAST_BF16_ENV}={answer})" in provenance
    assert expected in provenance


def test_an_invalid_answer_is_refused_in_one_sentence(tmp_path) -> None:
    env = {**os.environ, FORCE_FAST_BF16_ENV: "yes"}
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"),
                           "run_name=bad", "launcher=local", *TINY], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"{FORCE_FAST_BF16_ENV}='yes' is not valid" in last and "set it to 1" in last
    assert not (tmp_path / "runs" / "train" / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("answer,rows", [
    ("1", ["official-structure stand-in, fp32", "moco3, fp32", "moco3, bf16"]),
    ("0", ["official-structure stand-in, fp32", "moco3, fp32"])], ids=["fast-bf16", "no-fast-bf16"])
def test_step_benchmark_rows_follow_the_answer(answer, rows) -> None:
    """benchmarks/train_step.py on a toy model: a bf16 row exactly when auto picks bf16, the
    header says so, and without --official-code the baseline is labelled a stand-in."""
    env = {**os.environ, FORCE_FAST_BF16_ENV: answer}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--depth", "1",
         "--img-size", "16", "--patch-size", "8", "--dim", "32", "--mlp-dim", "64", "--batch",
         "4", "--warmup", "1", "--rounds", "1", "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert f"({FORCE_FAST_BF16_ENV}={answer})" in lines[0]
    assert f"precision auto -> {'bf16' if answer == '1' else 'fp32'} here" in lines[1]
    at = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert "vs official-structure stand-in" in lines[at]
    named = [line[:36].strip() for line in lines[at + 1:at + 1 + len(rows)]]
    assert named == rows, done.stdout
    assert not lines[at + 1 + len(rows)].startswith("moco3"), done.stdout
