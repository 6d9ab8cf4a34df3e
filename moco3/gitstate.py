"""The commit of the checkout moco3 runs from, for provenance (torch-free: the launcher
asks it too, to tell whether the code changed since a run failed)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def _git(folder: Path, *args: str) -> str | None:
    """git's output in `folder`, None when git fails or is missing."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# The committed results pages are what studies write, not code: the page one study's report
# has just rewritten must not make the next study's runs (or the next page) read as coming
# from a dirty tree. Pathspecs from the top of the checkout, whatever `folder` is.
PAGES = "docs/results"


def git_state(folder: Path) -> dict[str, Any]:
    """{"git_commit", "git_dirty"} of the git checkout holding `folder` (dirty: uncommitted
    changes to tracked files outside the results pages, PAGES); empty when it is not in a
    checkout or git is missing."""

    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return {}
    changes = _git(folder, "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                   f":(top,exclude){PAGES}")
    return {"git_commit": commit, "git_dirty": bool(changes)}


def tracked(path: Path) -> bool:
    """Whether git tracks `path` (False outside a checkout, or for an ignored copy)."""
    return _git(path.parent, "ls-files", "--error-unmatch", path.name) is not None
