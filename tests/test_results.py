"""experiments/results.py: the study cost it writes into RUN.md beside the wall time."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from moco3.experiments.results import run_minutes, run_precisions


def test_run_minutes_sums_the_runs_training_time_over_the_runs_trained_at_once(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("ablation,run_id,train_seconds,threads\n"
                   "a,x/seed=0,120,1\na,x/seed=1,240,1\na,y/seed=0,,1\nb,z/seed=0,999,1\n")
    parallel = len(os.sched_getaffinity(0))
    assert run_minutes(csv, "a") == (f"{6 / parallel:.1f} min (2 runs, {parallel} at a time; "
                                     "one run 2.0-4.0 min)")
    assert run_minutes(csv, "c") == "-"
    assert run_minutes(tmp_path / "missing.csv", "a") == "-"


def test_run_precisions_names_what_the_runs_recorded_not_what_auto_picks(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("ablation,run_id,precision\n"
                   "a,x/seed=0,fp32\na,x/seed=1,fp32\nb,y/seed=0,bf16\nb,y/seed=1,fp32\n"
                   "c,z/seed=0,\n")
    assert run_precisions(csv, "a") == "fp32"
    assert run_precisions(csv, "b") == "bf16, fp32"  # mixed: both named
    assert run_precisions(csv, "c") == "-"
    assert run_precisions(tmp_path / "missing.csv", "a") == "-"


def _env(root, run: str, *commits: tuple[str, bool]) -> None:
    import json

    folder = root / run
    folder.mkdir(parents=True)
    (folder / "env.json").write_text(json.dumps([{"git_commit": c, "git_dirty": d}
                                                 for c, d in commits]))


def test_a_page_from_mixed_or_dirty_code_is_named(tmp_path):
    from moco3.experiments.results import code_problem, run_commits

    _env(tmp_path, "a/x/seed=0", ("1" * 40, False))
    _env(tmp_path, "a/y/seed=0", ("1" * 40, False))
    assert code_problem(run_commits(tmp_path, ["a"])) == ""
    _env(tmp_path, "a/z/seed=0", ("1" * 40, False), ("2" * 40, True))  # resumed elsewhere
    _env(tmp_path, "b/z/seed=0", ("3" * 40, False))  # another study: not looked at
    commits = run_commits(tmp_path, ["a"])
    assert commits == {"1" * 10: ["a/x/seed=0", "a/y/seed=0", "a/z/seed=0"],
                       "2" * 10 + "+dirty": ["a/z/seed=0"]}
    assert code_problem(commits) == (
        f"the runs come from 2 code states: {'1' * 10} (3 runs, e.g. a/x/seed=0); "
        f"{'2' * 10}+dirty (1 runs, e.g. a/z/seed=0)")


def test_results_refuses_mixed_code_before_writing_the_page(tmp_path, monkeypatch, capsys):
    from moco3.experiments import results

    monkeypatch.setattr(results, "git_state", lambda repo: {"git_commit": "c", "git_dirty": 0})
    monkeypatch.setattr(results, "run_study", lambda *a, **k: (["python", "launch.py"], 1.0, 0))
    reports = []
    monkeypatch.setattr(results.subprocess, "run", lambda *a, **k: reports.append(a) or
                        SimpleNamespace(returncode=1, stdout=""))
    _env(tmp_path / "runs", "a/x/seed=0", ("1" * 40, False))
    _env(tmp_path / "runs", "a/y/seed=0", ("2" * 40, False))
    out = tmp_path / "page"
    args = ["--studies", "a", "--runs-root", str(tmp_path / "runs"), "--out", str(out)]
    assert results.main(args) == 2
    assert "the runs come from 2 code states" in capsys.readouterr().err
    assert not reports and not out.exists()
    assert results.main(args + ["--allow-mixed-code", "a docs-only commit between"]) == 1
    assert len(reports) == 1  # told why: the report ran (and, faked here, failed)
    monkeypatch.setattr(results, "git_state", lambda repo: {"git_commit": "c", "git_dirty": 1})
    assert results.main(args) == 2
    assert "uncommitted changes" in capsys.readouterr().err


def test_each_study_may_have_its_own_clean_commit_and_run_md_names_it(tmp_path, monkeypatch):
    """patch_proj's edge lr comes from the stability ladder, so the two studies run at two
    commits; each study's runs share one, and RUN.md names it beside the study."""
    from moco3.experiments import results

    monkeypatch.setattr(results, "git_state", lambda repo: {"git_commit": "c", "git_dirty": 0})
    monkeypatch.setattr(results, "run_study", lambda *a, **k: (["python", "launch.py"], 1.0, 0))
    monkeypatch.setattr(results.subprocess, "run", lambda *a, **k: SimpleNamespace(
        returncode=0, stdout="a CPU"))
    _env(tmp_path / "runs", "a/x/seed=0", ("1" * 40, False))
    _env(tmp_path / "runs", "a/y/seed=0", ("1" * 40, False))
    _env(tmp_path / "runs", "b/x/seed=0", ("3" * 40, False))
    out = tmp_path / "page"
    out.mkdir()  # the report (faked here) writes the folder
    assert results.main(["--studies", "a", "b", "--runs-root", str(tmp_path / "runs"),
                         "--out", str(out)]) == 0
    table = [line for line in (out / "RUN.md").read_text().splitlines()
             if line.startswith(("| a ", "| b "))]
    assert [row.split(" | ")[1] for row in table] == ["1" * 10, "3" * 10]
    # The page says how to remake itself: its studies, seeds and folders, not a bare
    # `make results` (which makes a different page, in the default folder).
    regenerate = next(line for line in (out / "RUN.md").read_text().splitlines()
                      if line.startswith("* Regenerate"))
    assert (f"`python experiments/results.py --scale mini --studies a b --seeds 5 --runs-root "
            f"{tmp_path / 'runs'} --out ") in regenerate
    assert "--ladder-seeds" not in regenerate  # neither study is a ladder


def test_wait_ticking_reports_the_time_so_far_while_the_process_runs():
    import subprocess
    import sys

    from moco3.experiments.results import wait_ticking

    ticks: list[float] = []
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    seconds, code = wait_ticking(process, ticks.append, tick_s=0.1)
    assert code == 0 and seconds >= 1.0
    assert len(ticks) >= 3 and ticks == sorted(ticks) and ticks[-1] <= seconds


def test_a_study_stopped_from_outside_keeps_its_wall_time(tmp_path, monkeypatch):
    """An invocation killed mid-study (a session's end) still counts in RUN.md's wall time:
    the time so far is saved at every tick, not only when the study ends."""
    import json

    from moco3.experiments import results

    monkeypatch.setattr(results, "git_state", lambda repo: {"git_commit": "c", "git_dirty": 0})

    def killed(*args, on_tick, **kwargs):
        on_tick(30.0)
        on_tick(60.0)
        raise KeyboardInterrupt  # stopped between two ticks

    monkeypatch.setattr(results, "run_study", killed)
    root = tmp_path / "runs"
    root.mkdir()
    (root / results.TIMES).write_text(json.dumps({"a": [100.0]}))
    args = ["--studies", "a", "--runs-root", str(root), "--out", str(tmp_path / "page")]
    with pytest.raises(KeyboardInterrupt):
        results.main(args)
    assert json.loads((root / results.TIMES).read_text()) == {"a": [100.0, 60.0]}
