"""Expand a composed launch configuration into the runs of its ablation (no I/O).

An ablation (conf/ablation/<name>.yaml, format in conf/ablation/README.md) is one cartesian
product of factors, or a union of several (`grids:`). Each factor maps a level label to
config overrides `{dotted.key: value}`; a value may be per scale, `{tiny: a, paper: b}`,
and a scale it does not name keeps the composed value. Every (cell, seed) becomes one run:
its id is "factor=label,.../seed=N" ("baseline/seed=N" without factors), its config the
composed run sections + the study's overrides + the levels', resolved through
`moco3.config.to_run_config` and stamped with `meta` (ablation, run_id, factors, seed,
scale, config_hash).
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moco3.archs import applies
from moco3.config import ConfigError, RunConfig, config_hash, to_run_config
from moco3.experiments.schema import SCALES, GridConfig, ResourcesConfig
from moco3.runfolder.study import Finding, FindingError, parse_findings

RUN_KEYS = tuple(RunConfig.__dataclass_fields__)  # seed, model, moco, data, ...
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,-]")
_ABSENT = object()


class GridError(ValueError):
    """An ablation that cannot be expanded; the message is one sentence."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid, fully resolved, before anything is written."""

    run_id: str
    factors: dict[str, str]
    seed: int
    config: DictConfig  # a validated RunConfig whose meta carries config_hash
    resources: dict[str, Any]  # ResourcesConfig fields
    config_hash: str

    def resource_key(self) -> tuple[Any, ...]:
        """Runs with equal keys go in one job array."""
        return tuple(sorted(self.resources.items()))


def sanitize(text: str) -> str:
    """Keep run ids to [A-Za-z0-9._=,-]: they are folder names and SLURM job names."""
    return _UNSAFE.sub("_", str(text))


def check_folder_name(what: str, value: str) -> str:
    """A user-given name of a folder under the runs root (`run_name=`), checked like the
    run ids made from factor labels: relative, parts of [A-Za-z0-9._=,-] only, none of
    them "." or "..", so it can never leave the runs root. Returns it; GridError if not."""
    text = str(value)
    parts = text.split("/")
    if not text or text.startswith("/") or any(
            part in ("", ".", "..") or sanitize(part) != part for part in parts):
        raise GridError(f"{what}={text!r} would not be a folder inside the runs root; use "
                        "letters, digits and . _ = , - (parts may be separated by /, none of "
                        "them . or ..), e.g. run_name=lr1e-3.")
    return text


def make_run_id(factors: Mapping[str, str], seed: int) -> str:
    cell = ",".join(f"{sanitize(k)}={sanitize(v)}" for k, v in factors.items())
    return f"{cell or 'baseline'}/seed={seed}"


def is_per_scale(value: Any) -> bool:
    """A mapping whose keys are all scale names is a per-scale value."""
    return isinstance(value, Mapping) and bool(value) and set(value) <= set(SCALES)


def at_scale(value: Any, scale: str) -> tuple[bool, Any]:
    """(applies, value) of an override value at `scale`."""
    if is_per_scale(value):
        return (scale in value, value.get(scale))
    return True, value


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _grids(ablation: DictConfig) -> list[GridConfig]:
    if ablation.grids and ablation.factors:
        raise GridError("an ablation sets either `factors:` (one grid) or `grids:` (a list of "
                        "grids), not both.")
    if ablation.grids:
        return [GridConfig(factors=_plain(g.factors), overrides=_plain(g.overrides))
                for g in ablation.grids]
    return [GridConfig(factors=_plain(ablation.factors))]


LEVEL_SCALES = "_scales"  # a level's reserved key: the scales at which the level exists


def cells(ablation: DictConfig, scale: str | None = None
          ) -> list[tuple[dict[str, str], list[tuple[str, dict[str, Any]]]]]:
    """The grid's cells in file order: (factor -> label, [(where, overrides), ...]). A level
    whose `_scales` list leaves out `scale` does not exist at that scale."""
    out = []
    for g, grid in enumerate(_grids(ablation)):
        names = list(grid.factors)
        for name in names:
            if not isinstance(grid.factors[name], Mapping) or not grid.factors[name]:
                raise GridError(f"factor {name!r} needs a mapping of level label -> overrides.")
        levels = [[(label, overrides) for label, overrides in grid.factors[name].items()
                   if _level_exists(name, label, overrides, scale)] for name in names]
        for combo in itertools.product(*levels):
            labels = {name: str(label) for name, (label, _) in zip(names, combo, strict=True)}
            sources = [(f"grids[{g}].overrides", grid.overrides or {})]
            for name, (label, overrides) in zip(names, combo, strict=True):
                if overrides is not None and not isinstance(overrides, Mapping):
                    raise GridError(f"level {name}={label} must map config keys to values, "
                                    f"got {overrides!r}.")
                sources.append((f"{name}={label}", {k: v for k, v in (overrides or {}).items()
                                                     if k != LEVEL_SCALES}))
            out.append((labels, sources))
    return out


def _level_exists(name: str, label: str, overrides: Any, scale: str | None) -> bool:
    if not isinstance(overrides, Mapping) or LEVEL_SCALES not in overrides:
        return True
    scales = overrides[LEVEL_SCALES]
    if not isinstance(scales, list) or not set(scales) <= set(SCALES):
        raise GridError(f"level {name}={label}: {LEVEL_SCALES} must be a list of scales "
                        f"from {list(SCALES)}, got {scales!r}.")
    return scale is None or scale in scales


def study_findings(ablation_cfg: DictConfig, ablation: str) -> list[Finding]:
    """The study's `findings:` block, checked against its grid at every scale: a finding
    that names a factor or level the file does not have is refused in one sentence."""
    all_cells = [labels for labels, _ in cells(ablation_cfg, None)]
    levels: dict[str, list[str]] = {}
    for labels in all_cells:
        for name, label in labels.items():
            if label not in levels.setdefault(name, []):
                levels[name].append(label)
    try:
        return parse_findings(_plain(ablation_cfg.get("findings")), levels,
                              f"ablation {ablation}", all_cells)
    except FindingError as err:
        raise GridError(str(err)) from None


def seeds_for(ablation: DictConfig, scale: str, override: Any) -> list[int]:
    raw = _plain(override) if override is not None else _plain(ablation.seeds)
    applies, value = at_scale(raw, scale)
    seeds = value if applies and value is not None else [0]
    if isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise GridError(f"seeds must be a non-empty list of integers, got {raw!r}.")
    return list(dict.fromkeys(seeds))


def _check_not_empty(study: DictConfig, ablation: str) -> None:
    """A study that varies nothing and sets nothing (an empty file) is a mistake unless it
    says it is the baseline alone (`baseline: true`, as ablation/none.yaml)."""
    if not (study.factors or study.grids or study.overrides or study.baseline):
        raise GridError(f"ablation {ablation} has no factors, no grids and no overrides (an "
                        "empty file?); give it factors (format in experiments/conf/ablation/"
                        "README.md), or `baseline: true` for one baseline run, as "
                        "ablation=none does.")


def _apply(node: DictConfig, overrides: Mapping[str, Any], scale: str, where: str) -> None:
    for key, value in overrides.items():
        applies, value = at_scale(value, scale)
        if not applies:
            continue
        if OmegaConf.select(node, key, default=_ABSENT) is _ABSENT:
            sections = ", ".join(str(k) for k in node)
            raise GridError(f"{where}: {key!r} is not a config key (sections: {sections}).")
        OmegaConf.update(node, key, value, merge=False)


def _absolute_data_root(node: DictConfig) -> None:
    # The job may start in another directory (a SLURM node): record where the data is.
    root = node.data.root
    if root is not None and not str(root).startswith(("/", "~")) and "://" not in str(root):
        node.data.root = str(Path(root).resolve())
    elif root is not None and str(root).startswith("~"):
        node.data.root = str(Path(root).expanduser())


def _check_varied_keys_apply(node: DictConfig, sources: list[tuple[str, dict[str, Any]]],
                             ablation: str, run_id: str) -> None:
    """A study may only vary model switches that mean something for the run's arch (a
    pos_embed study on a ResNet-50 would train identical models under three labels)."""
    arch = node.model.arch
    for where, overrides in sources[1:]:  # the levels; sources[0] is the grid's overrides
        for key in overrides:
            if key.startswith("model.") and not applies(arch, key[len("model."):]):
                raise GridError(f"ablation {ablation}: level {where} varies {key}, which "
                                f"cannot apply to model.arch={arch} (run {run_id}); choose "
                                "an architecture the study applies to.")


def expand(cfg: DictConfig, ablation: str, scale: str) -> list[PlannedRun]:
    """Every run of `cfg.ablation` at `scale`, in grid order, seeds innermost. Interpolations
    resolve after the study's overrides, so a value derived from another (the R50 recipe
    from train.epochs) follows what the study sets."""
    base = OmegaConf.create({k: OmegaConf.to_container(cfg[k], resolve=False)
                             if isinstance(cfg[k], DictConfig) else cfg[k] for k in RUN_KEYS})
    base.resources = _plain(cfg.resources)
    study_findings(cfg.ablation, ablation)
    runs: list[PlannedRun] = []
    study = _plain(cfg.ablation.overrides) or {}
    seeds = seeds_for(cfg.ablation, scale, cfg.get("seeds"))
    _check_not_empty(cfg.ablation, ablation)
    for factors, sources in cells(cfg.ablation, scale):
        for seed in seeds:
            run_id = make_run_id(factors, seed)
            node = copy.deepcopy(base)
            _apply(node, study, scale, f"ablation {ablation}: overrides")
            for where, overrides in sources:
                _apply(node, overrides, scale, f"ablation {ablation}: {where}")
            _check_varied_keys_apply(node, sources, ablation, run_id)
            node.seed = seed
            node.meta = {"ablation": ablation, "run_id": run_id, "factors": factors,
                         "seed": seed, "scale": scale}
            _absolute_data_root(node)
            try:
                resources = OmegaConf.to_container(OmegaConf.merge(
                    OmegaConf.structured(ResourcesConfig), node.pop("resources")))
            except OmegaConfBaseException as err:
                raise GridError(f"run {run_id}: invalid resources: "
                                f"{str(err).splitlines()[0]}") from None
            try:
                run_cfg = to_run_config(node)
            except ConfigError as err:
                raise GridError(f"run {run_id}: {err}") from None
            digest = config_hash(run_cfg)
            run_cfg.meta.config_hash = digest
            runs.append(PlannedRun(run_id, factors, seed, run_cfg, resources, digest))
    _check_distinct(runs, ablation, scale)
    return runs


def _check_distinct(runs: list[PlannedRun], ablation: str, scale: str) -> None:
    seen_ids: set[str] = set()
    seen_hash: dict[str, str] = {}
    for run in runs:
        if run.run_id in seen_ids:
            raise GridError(f"ablation {ablation}: two runs share the id {run.run_id!r} "
                            "(labels that differ only in characters outside [A-Za-z0-9._=,-]).")
        seen_ids.add(run.run_id)
        if run.config_hash in seen_hash:
            raise GridError(
                f"ablation {ablation} at scale {scale}: runs {seen_hash[run.config_hash]} and "
                f"{run.run_id} resolve to the same configuration; give each level a value at "
                f"this scale."
            )
        seen_hash[run.config_hash] = run.run_id
