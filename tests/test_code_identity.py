"""moco3/code_identity.py: which code ran, for checkouts, installed copies and copies
without git; and the relaunch rule that uses it (experiments/rundir.code_changed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from moco3 import code_identity as ci
from moco3 import gitstate
from moco3.experiments import rundir
from moco3.runfolder import layout

REPO = Path(__file__).resolve().parents[1]


def _head() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def fresh(monkeypatch):
    """code_identity and source_hash computed again for each case."""
    ci.code_identity.cache_clear()
    ci.source_hash.cache_clear()
    yield
    ci.code_identity.cache_clear()
    ci.source_hash.cache_clear()


def test_a_checkout_reports_git_and_a_source_hash(fresh):
    if not _head():
        pytest.skip("not a git checkout")
    identity = ci.code_identity()
    assert identity["code_source"] == "git" and identity["git_commit"] == _head()
    assert isinstance(identity["git_dirty"], bool) and len(identity["code_hash"]) == 64


def test_an_installed_copy_uses_its_build_record(fresh, monkeypatch):
    monkeypatch.setattr(ci, "tracked", lambda path: False)  # not git's: an installed copy
    monkeypatch.setattr(ci, "build_record", lambda: {"git_commit": "28ac6cf08",
                                                     "git_dirty": True})
    identity = ci.code_identity()
    assert (identity["code_source"], identity["git_commit"], identity["git_dirty"]) == (
        "build", "28ac6cf08", True)


def test_without_git_the_source_hash_tells_copies_apart(fresh, monkeypatch, tmp_path):
    monkeypatch.setattr(ci, "tracked", lambda path: False)
    monkeypatch.setattr(ci, "build_record", dict)
    (tmp_path / "moco3").mkdir()
    (tmp_path / "moco3" / "a.py").write_text("x = 1\n")
    (tmp_path / "moco3" / "_build.py").write_text("commit = None\n")
    (tmp_path / "moco3" / "__pycache__").mkdir()
    (tmp_path / "moco3" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    monkeypatch.setattr(ci, "package_dirs", lambda: [tmp_path / "moco3"])
    first = ci.code_identity()
    assert first["code_source"] == "files" and "git_commit" not in first
    ci.code_identity.cache_clear()
    ci.source_hash.cache_clear()
    (tmp_path / "moco3" / "_build.py").write_text("commit = 'g1234567'\n")  # not a source
    assert ci.code_identity()["code_hash"] == first["code_hash"]
    ci.code_identity.cache_clear()
    ci.source_hash.cache_clear()
    (tmp_path / "moco3" / "a.py").write_text("x = 2\n")
    assert ci.code_identity()["code_hash"] != first["code_hash"]


def test_a_short_build_commit_names_the_same_commit():
    full = "28ac6cf089b476767759d8f39427115157be1424"
    assert ci.same_commit(full, "28ac6cf08") and ci.same_commit("28ac6cf08", full)
    assert not ci.same_commit(full, "28ac6cf07") and not ci.same_commit(full, "28a")


@pytest.mark.parametrize("ran,now,changed", [
    ({"git_commit": "a" * 40, "code_hash": "h1"}, {"git_commit": "a" * 9, "code_hash": "h1"},
     None),
    ({"git_commit": "a" * 40, "code_hash": "h1"}, {"git_commit": "b" * 40, "code_hash": "h1"},
     "the code moved from commit aaaaaaaaaa to bbbbbbbbbb"),
    ({"git_commit": "a" * 40, "git_dirty": True, "code_hash": "h1"},
     {"git_commit": "a" * 40, "git_dirty": True, "code_hash": "h2"},
     "the source files changed (hash h1 -> h2)"),
    ({"git_commit": "a" * 40, "git_dirty": True, "code_hash": "h1"},
     {"git_commit": "a" * 40, "git_dirty": True, "code_hash": "h1"}, None),  # same edits
    ({"code_hash": "h1"}, {"code_hash": "h2"}, "the source files changed"),  # no git at all
    ({"code_hash": "h1"}, {"code_hash": "h1"}, None),
    ({"git_commit": "a" * 40}, {"git_commit": "a" * 40, "git_dirty": True, "code_hash": "h"},
     "the checkout has uncommitted changes"),  # a record from before code_hash
    ({}, {"git_commit": "a" * 40, "code_hash": "h"}, None),
])
def test_the_relaunch_rule_sees_a_change_in_any_copy(tmp_path, monkeypatch, ran, now,
                                                     changed):
    (tmp_path / layout.ENV).write_text(json.dumps([{"host": "x", **ran}]))
    monkeypatch.setattr(rundir, "code_identity", lambda: now)
    reason = rundir.code_changed(tmp_path)
    assert (reason is None) if changed is None else (reason is not None
                                                      and reason.startswith(changed)), reason


def test_a_rewritten_results_page_is_not_a_code_change(tmp_path):
    """results.py runs studies one after another from one checkout: the page the first one's
    report rewrote must not mark the second one's runs dirty; any other edit does."""
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    (tmp_path / "docs" / "results" / "mini").mkdir(parents=True)
    (tmp_path / "moco3").mkdir()
    page, code = tmp_path / "docs/results/mini/README.md", tmp_path / "moco3/loss.py"
    page.write_text("old page\n")
    code.write_text("tau = 0.2\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    page.write_text("new page\n")
    state = gitstate.git_state(tmp_path / "moco3")  # asked from the package, as code_identity
    assert len(state["git_commit"]) == 40 and state["git_dirty"] is False
    code.write_text("tau = 0.1\n")
    assert gitstate.git_state(tmp_path / "moco3")["git_dirty"] is True
