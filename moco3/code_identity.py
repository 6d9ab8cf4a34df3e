"""Which code ran: the commit and dirty flag of every copy of moco3, and a hash of its
sources (torch-free: the launcher asks it too, to tell whether the code changed since a run
failed).

* A git checkout (`python experiments/...`, `pip install -e .`): git itself, now
  (`code_source: git`).
* An installed copy (`pip install .`): what setuptools-scm read from git when the copy was
  built (moco3/_build.py, written at build time: the short commit and whether the tree had
  uncommitted changes; `code_source: build`).
* Neither (built from a tree without git): no commit (`code_source: files`).

Always `code_hash`: the sha256 of the source files of moco3 and its three layers
(moco3.experiments, moco3.analysis, moco3.runfolder: their .py, .yaml, .md and .txt files),
the same for a checkout and an installed copy of the same files, so two copies without a
commit are still told apart, and a dirty checkout can tell its edits from a failed run's.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from moco3.gitstate import git_state, tracked

LAYERS = ("experiments", "analysis", "runfolder")  # imported as moco3.<layer>
SOURCE_SUFFIXES = (".py", ".yaml", ".md", ".txt")
BUILD_RECORD = "_build"  # moco3/_build.py, written by setuptools-scm (pyproject.toml)


def package_dirs() -> list[Path]:
    """The folders of moco3 and its three layers, as this copy lays them out: inside moco3/
    when installed (site-packages/moco3/experiments), beside it in a checkout (not whatever
    sys.path finds first under those names)."""
    here = Path(__file__).resolve().parent
    found = [here]
    for name in LAYERS:
        folder = next((f for f in (here / name, here.parent / name)
                       if (f / "__init__.py").is_file()), None)
        if folder is not None:
            found.append(folder)
    return found


@functools.cache
def source_hash() -> str:
    """sha256 over (package folder name / path below it, content) of every source file, in
    order; the same for a checkout and an installed copy of the same files."""
    digest = hashlib.sha256()
    folders = package_dirs()
    for root in folders:
        nested = [f for f in folders if root in f.parents]  # installed: moco3/experiments/
        files = sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES
                       and "__pycache__" not in p.parts and p.stem != BUILD_RECORD
                       and p.is_file() and not any(f in p.parents for f in nested))
        for path in files:
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def build_record() -> dict[str, Any]:
    """{"git_commit", "git_dirty"} that setuptools-scm wrote when this copy was built; {}
    when it wrote none or knew no commit."""
    try:
        from moco3 import _build  # type: ignore[attr-defined]
    except ImportError:
        return {}
    commit = getattr(_build, "commit", None)
    if not commit:
        return {}
    return {"git_commit": str(commit).removeprefix("g"),
            "git_dirty": bool(getattr(_build, "dirty", False))}


@functools.cache
def code_identity() -> dict[str, Any]:
    """{"git_commit", "git_dirty", "code_source", "code_hash"} of the code of this process
    (git_commit and git_dirty absent when no commit is known)."""
    here = Path(__file__).resolve().parent
    # A copy installed into an ignored folder of some checkout (.venv/...) is not that
    # checkout's code: trust git only for files it tracks.
    state = git_state(here) if tracked(here / "__init__.py") else {}
    source = "git"
    if not state:
        state, source = build_record(), "build"
    if not state:
        source = "files"
    return {**state, "code_source": source, "code_hash": source_hash()}


def same_commit(a: str, b: str) -> bool:
    """Whether two commit ids name one commit (a build records a short one)."""
    n = min(len(a), len(b))
    return n >= 7 and a[:n] == b[:n]
