"""The command-line conventions every moco3 command shares (argparse side; launch.py and
train.py, which parse with Hydra, accept the same spellings):

* the runs root: `--runs-root DIR` or `runs_root=DIR`, else $MOCO3_RUNS_ROOT, else ./runs;
* `key=value` pairs as on launch.py's command line, beside the `--key value` options;
* the name a command gives itself in its usage and messages is the one it was invoked by:
  `moco3-status` installed, `python experiments/status.py` from a checkout,
  `python -m moco3.tensorboard` under -m.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from moco3.runfolder.layout import DEFAULT_RUNS_ROOT, ENV_RUNS_ROOT

RUNS_ROOT_HELP = (f"the folder of <ablation>/<run_id>/ run folders; also runs_root=DIR "
                  f"(default: ${ENV_RUNS_ROOT}, else ./{DEFAULT_RUNS_ROOT})")


def invoked_as(default: str) -> str:
    """This process's command as the user typed it; `default` when that is unknown (a
    command called in-process, e.g. from a test)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", ""):
        return f"python -m {spec.name.removesuffix('.__main__')}"
    argv0 = sys.argv[0] if sys.argv else ""
    name = os.path.basename(argv0)
    if name.startswith("moco3-"):
        return name
    if name.endswith(".py") and name != "__main__.py":
        return f"python {argv0}"
    return default


def parser(default_prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser named as invoked, with `--runs-root`."""
    p = argparse.ArgumentParser(prog=invoked_as(default_prog), description=description,
                                **kwargs)
    p.add_argument("--runs-root", default=None, metavar="DIR", help=RUNS_ROOT_HELP)
    return p


def add_pairs(p: argparse.ArgumentParser, keys: Sequence[str]) -> None:
    """A trailing `key=value ...` argument for `keys` (runs_root first)."""
    p.add_argument("pairs", nargs="*", metavar="key=value",
                   help=" and ".join(f"{k}=..." for k in keys)
                   + ", as on launch.py's command line")


def apply_pairs(p: argparse.ArgumentParser, args: argparse.Namespace,
                keys: Sequence[str], repeatable: Sequence[str] = ()) -> argparse.Namespace:
    """Move each `key=value` of args.pairs onto args (a repeatable key appends to a list);
    anything else is refused in one sentence naming the valid keys."""
    for pair in args.pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in keys:
            p.error(f"unknown argument {pair!r}; valid: "
                    + ", ".join(f"{k}=..." for k in keys) + " and the --options of --help")
        if key in repeatable:
            setattr(args, key, [*(getattr(args, key) or []), value])
        else:
            setattr(args, key, value)
    return args
