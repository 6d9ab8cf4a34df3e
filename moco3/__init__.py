"""moco3: MoCo v3 (Chen, Xie, He, ICCV 2021), a reproducibility and ablation harness.

One import name for the whole project, so that nothing of it collides with a user's own
top-level packages (research repositories often have an `experiments` or `analysis`):

    moco3              one job: models, training, checkpoints (this folder)
    moco3.experiments  the launcher: Hydra config tree, grid, launch, status, local pool, SLURM
    moco3.analysis     the report; reads run folders only, never torch or moco3's job code
    moco3.runfolder    the run-folder contract the layers share (standard library only)

An installed copy (`pip install .`) holds all four under site-packages/moco3/
(pyproject.toml maps the folders). A checkout keeps its own layout - experiments/, analysis/
and runfolder/ beside moco3/ - and the same names work there as well: see below.

This file stays light and imports only the standard library, because `moco3.analysis` and
`moco3.runfolder` run it first and must not pull in torch or the job's code.
"""

from __future__ import annotations

import os
import sys

# A checkout: moco3/ sits beside experiments/, analysis/ and runfolder/ under the folder
# that holds pyproject.toml. There, moco3.experiments (...) must resolve to <root>/experiments
# (...) without an install step - for `PYTHONPATH=<root>`, for pytest, and for a checkout's
# files run as scripts when the editable install's finder is absent - so the root joins this
# package's search path. Only in a checkout: in site-packages the three live inside moco3/,
# and a folder next to site-packages/moco3 named `experiments` is someone else's package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LAYERS = ("experiments", "analysis", "runfolder")
if (os.path.isfile(os.path.join(_ROOT, "pyproject.toml"))
        and all(os.path.isfile(os.path.join(_ROOT, name, "__init__.py")) for name in _LAYERS)
        and not any(os.path.isdir(os.path.join(__path__[0], name)) for name in _LAYERS)):
    __path__.append(_ROOT)  # noqa: F821 - the package's own __path__


def run_as_script(file: str, up: int = 1) -> None:
    """The first line of a checkout's file run as a script (`python analysis/report.py`):
    Python put the file's folder first on sys.path, so its sibling modules would shadow
    installed modules of the same top-level name (analysis/tables.py would be imported as
    PyTables' `tables`, analysis/stats.py as any `stats`). Replace that entry with the
    checkout's root, which holds benchmarks/ for the benchmark scripts; the project's own
    code is imported as moco3.* either way. A no-op when `file` was imported as a module or
    run with `python -m`. `up`: how many folders above the script's the root is (2 for a
    package's __main__.py run as a folder, `python benchmarks/gpu_check`)."""
    here = os.path.dirname(os.path.realpath(file))
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == here:
        root = here
        for _ in range(up):
            root = os.path.dirname(root)
        sys.path[0] = root
