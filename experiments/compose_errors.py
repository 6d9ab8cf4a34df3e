"""Hydra's composition errors as one sentence each, naming what is valid.

    check_composition(argv, prog)   # before hydra.main sees the command line

Hydra refuses a mistyped group choice (`ablation=nope`), key (`optim.lrr=1`) or value
(`train.epochs=abc`) with its own multi-line text (search path, grammar links, a hint to
append with +). `check_composition` composes the command line once with Hydra's compose
API and turns such a failure into one sentence on stderr (exit status 2). `--verbose`
skips it, so Hydra's full message and traceback (HYDRA_FULL_ERROR=1) come out instead.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from moco3.experiments.schema import LaunchConfig, register

CONF_DIR = Path(__file__).resolve().parent / "conf"
VERBOSE = "--verbose"
_QUOTED = re.compile(r"'([^']+)'")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__


def _choices(valid: list[str]) -> str:
    return ", ".join(valid) if valid else "none"


def missing_choice(err: MissingConfigException) -> str:
    """`ablation=nope`: the group's valid choices."""
    group, _, name = str(err.missing_cfg_file or "").rpartition("/")
    if not group:
        return _first_line(err) + "."
    return (f"{group}={name} is not a choice of {group}; valid: {_choices(err.options or [])} "
            f"(or add {group}/{name}.yaml in a conf_dir=).")


def unknown_key(key: str) -> str:
    """`optim.lrr=1`: the valid keys where it points, and the closest one."""
    schema = OmegaConf.structured(LaunchConfig)
    parent, _, leaf = key.lstrip("+").rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    if not isinstance(node, DictConfig):
        return f"{key} is not a config key ({parent} has no keys under it)."
    valid = sorted(str(k) for k in node.keys())
    if not parent:
        valid = sorted(set(valid) | {"scale"})
    where = f"of {parent}" if parent else "at the top level"
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    return f"{key} is not a config key{hint}; valid keys {where}: {_choices(valid)}."


def bad_override(argv: list[str]) -> str:
    """The override Hydra's grammar cannot read."""
    parser = OverridesParser.create()
    for arg in argv:
        try:
            parser.parse_overrides([arg])
        except HydraException as err:
            return (f"{arg} cannot be read as key=value ({_first_line(err)}); quote values "
                    "with brackets or commas, e.g. 'seeds=[0,1]'.")
    return "the command line cannot be read as key=value overrides."


def sentence(err: BaseException, argv: list[str]) -> str:
    """One sentence for a composition failure."""
    if isinstance(err, MissingConfigException):
        return missing_choice(err)
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and isinstance(
            cause, (ConfigAttributeError, ConfigKeyError)):
        quoted = _QUOTED.findall(str(err))
        if quoted:
            return unknown_key(quoted[0])
    if isinstance(err, ConfigCompositionException) and isinstance(cause,
                                                                  OmegaConfBaseException):
        what = str(err).removeprefix("Error merging override ").strip()
        return f"{what}: {_first_line(cause)}."
    if type(err).__name__ == "OverrideParseException":
        return bad_override(argv)
    return _first_line(err) + (f" ({_first_line(cause)})" if cause else "") + "."


def composition_error(argv: list[str], conf_dir: Path = CONF_DIR) -> str | None:
    """The sentence for what Hydra would refuse in `argv` (overrides, after
    launch.hydra_argv), or None when it composes. Hydra's own flags (--help, --cfg, ...)
    are left to Hydra."""
    if any(arg.startswith("-") for arg in argv):
        return None
    register()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            compose("config", overrides=argv)
    except (HydraException, OmegaConfBaseException) as err:
        return sentence(err, argv)
    return None


def check_composition(argv: list[str], prog: str) -> list[str]:
    """`argv` without --verbose; exits with one sentence (status 2) when it does not
    compose, unless --verbose asks for Hydra's full text."""
    if VERBOSE in argv:
        os.environ["HYDRA_FULL_ERROR"] = "1"
        return [arg for arg in argv if arg != VERBOSE]
    problem = composition_error(argv)
    if problem:
        print(f"{prog}: error: {problem.rstrip('.')}; {VERBOSE} shows Hydra's full message.",
              file=sys.stderr)
        sys.exit(2)
    return argv
