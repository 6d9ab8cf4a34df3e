"""The layering: runfolder (the contract) <- moco3 <- experiments, runfolder <- analysis.

The four folders are imported as moco3.runfolder, moco3 (the job's code), moco3.experiments
and moco3.analysis. Walks the imports of every module of the four folders (static, with ast:
every `import` and `from ... import`, also inside functions) and fails on an arrow against
the flow, and on the old top-level spellings (`experiments`, `analysis`, `runfolder`), which
collide with users' own packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("runfolder", "moco3", "experiments", "analysis")
SUBPACKAGES = ("runfolder", "experiments", "analysis")  # moco3.<name>, folders beside moco3/
ALLOWED = {
    "runfolder": set(),
    "moco3": {"runfolder"},
    "experiments": {"runfolder", "moco3"},
    "analysis": {"runfolder"},
}
OLD_SPELLING = "old top-level name"


def layer_of(module: str) -> str | None:
    """The layer an imported module belongs to: moco3.runfolder.x -> runfolder, moco3.x ->
    moco3 (the job's code); None for the package root `moco3` itself (standard library
    only, see test_the_package_root_is_light) and for modules outside the project."""
    parts = module.split(".")
    if parts[0] in SUBPACKAGES:
        return OLD_SPELLING
    if parts[0] != "moco3" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in SUBPACKAGES else "moco3"


def imported_layers(path: Path) -> set[str]:
    """The project layers a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "moco3":
            # `from moco3 import runfolder` is a layer; `from moco3 import config` the job's
            # code; `from moco3 import run_as_script` the package root.
            names = [f"moco3.{a.name}" if a.name in SUBPACKAGES
                     or (REPO / "moco3" / f"{a.name}.py").is_file() else "moco3"
                     for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {layer_of(name) for name in names} - {None}
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_every_module_imports_only_downward(layer):
    modules = sorted((REPO / layer).rglob("*.py"))
    assert modules
    wrong = {str(p.relative_to(REPO)): sorted(imported_layers(p) - ALLOWED[layer] - {layer})
             for p in modules}
    assert not {k: v for k, v in wrong.items() if v}


def test_nothing_imports_the_old_top_level_names():
    """Every import spells moco3.experiments, moco3.analysis, moco3.runfolder: the same in a
    checkout and in an installed copy, where no top-level `experiments` exists."""
    wrong = [str(p.relative_to(REPO)) for folder in (*LAYERS, "benchmarks", "tests")
             for p in sorted((REPO / folder).rglob("*.py")) if OLD_SPELLING in imported_layers(p)]
    assert not wrong


def test_the_layer_map_sees_every_spelling(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import moco3\nfrom moco3 import run_as_script, runfolder, config\n"
                      "import moco3.analysis.tables\nfrom moco3.experiments.grid import x\n"
                      "from analysis import y\nimport numpy\n")
    assert imported_layers(module) == {"runfolder", "moco3", "analysis", "experiments",
                                       OLD_SPELLING}


def test_the_contract_and_the_analysis_never_import_torch():
    for layer in ("runfolder", "analysis"):
        for path in (REPO / layer).rglob("*.py"):
            tree = ast.parse(path.read_text())
            names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                     for a in n.names}
            names |= {n.module.split(".")[0] for n in ast.walk(tree)
                      if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
            assert "torch" not in names, path


def test_the_package_root_is_light():
    """moco3/__init__.py runs first for every moco3.* import: the standard library only."""
    tree = ast.parse((REPO / "moco3" / "__init__.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names <= {"__future__", "os", "sys"}, names


def test_importing_the_contract_and_the_analysis_loads_no_torch_and_no_job_code():
    """Through the real import system: every module of moco3.runfolder and moco3.analysis
    imported, and neither torch nor any module of moco3's job code came with them."""
    modules = [f"moco3.{layer}.{p.stem}" for layer in ("runfolder", "analysis")
               for p in sorted((REPO / layer).glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or "
            "(m.startswith('moco3.') and m.split('.')[1] not in ('runfolder', 'analysis'))]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# Collection literals outside runfolder/ that may spell contract names, with the reason.
# Keyed by (module, the literal's elements in order).
ALLOWED_SPELLINGS: dict[tuple[str, tuple[str, ...]], str] = {}


def _contract_spellings(path: Path) -> list[tuple[str, ...]]:
    """The tuple/list/set literals of `path` that re-spell part of the run-folder contract:
    2+ state names, 2+ gradient groups, or 3+ status.json/summary.json keys, and nothing else."""
    from moco3.runfolder.fields import GRAD_GROUPS, STATUS_KEYS, SUMMARY_EXTRA_KEYS, SUMMARY_KEYS
    from moco3.runfolder.states import STATES, UNKNOWN

    lists = ((set(STATES) | {UNKNOWN}, 2), (set(GRAD_GROUPS), 2),
             (STATUS_KEYS | SUMMARY_KEYS | SUMMARY_EXTRA_KEYS, 3))
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Tuple | ast.List | ast.Set):
            continue
        values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        if len(values) != len(node.elts) or not all(isinstance(v, str) for v in values):
            continue
        if any(len(values) >= least and set(values) <= names for names, least in lists):
            found.append(tuple(values))
    return found


def _found_outside_runfolder(find) -> dict[str, list[str]]:
    """module -> what `find(name, path)` reports in it, over moco3, experiments and analysis."""
    wrong = {}
    for layer in ("moco3", "experiments", "analysis"):
        for path in sorted((REPO / layer).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if found := find(name, path):
                wrong[name] = found
    return wrong


def test_only_runfolder_spells_states_keys_and_groups():
    """Run states, their groupings and order, the status/summary key lists and the gradient
    groups are runfolder's data; the layers import them instead of listing them again."""
    assert not _found_outside_runfolder(lambda name, path: [
        v for v in _contract_spellings(path) if (name, v) not in ALLOWED_SPELLINGS])


def test_the_ownership_scan_finds_a_respelling(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('TRAINED = ("done", "diverged")\nKEYS = {"knn_top1", "step", "state"}\n'
                      'GROUPS = ["first_block", "last_block"]\nOTHER = ("done", "later")\n')
    assert _contract_spellings(module) == [("done", "diverged"),
                                            ("knn_top1", "step", "state"),
                                            ("first_block", "last_block")]


# Single state names spelled outside runfolder/ as a string, with the reason.
# Keyed by (module, the name).
ALLOWED_STATE_LITERALS: dict[tuple[str, str], str] = {
    ("experiments/results.py", "unknown"):
        "the text shown for a git commit that could not be read, not a run's state",
}
# Fields whose values share words with the states ("diverged" and "failed" are also event
# names, "done" a phase): their values are not states, and are not flagged.
OTHER_VOCABULARY = ("event", "phase")


def _reads_other_vocabulary(node: ast.expr) -> bool:
    """`x.get("event")` or `x["phase"]`: the value of a field that is not a state."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "get" and node.args:
        node = node.args[0]
    elif isinstance(node, ast.Subscript):
        node = node.slice
    else:
        return False
    return isinstance(node, ast.Constant) and node.value in OTHER_VOCABULARY


def _state_names_in(node: ast.expr, names: set[str]) -> list[ast.Constant]:
    """The state-name constants that `node` is, or chooses between (a if c else b, a or b),
    or lists (a tuple / list / set literal)."""
    if isinstance(node, ast.Constant):
        return [node] if isinstance(node.value, str) and node.value in names else []
    if isinstance(node, ast.IfExp):
        return _state_names_in(node.body, names) + _state_names_in(node.orelse, names)
    parts = node.values if isinstance(node, ast.BoolOp) else \
        node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else []
    return [c for part in parts for c in _state_names_in(part, names)]


def _state_literals(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every run-state name that `path` spells as a string where a value
    goes: compared (==, !=, in), returned, assigned, passed to a call, put in a dict,
    matched by a case. Docstrings, messages and f-strings are not values of a state."""
    from moco3.runfolder.states import STATES, UNKNOWN

    names = set(STATES) | {UNKNOWN}
    values: list[ast.expr] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if not any(_reads_other_vocabulary(o) for o in operands):
                values += operands
        elif isinstance(node, ast.Return | ast.Assign | ast.AnnAssign | ast.Yield) \
                and node.value is not None:
            values.append(node.value)
        elif isinstance(node, ast.Call):
            values += [*node.args, *(k.value for k in node.keywords
                                     if k.arg not in OTHER_VOCABULARY)]
        elif isinstance(node, ast.Dict):
            values += [v for k, v in zip(node.keys, node.values, strict=True)
                       if not (isinstance(k, ast.Constant) and k.value in OTHER_VOCABULARY)]
        elif isinstance(node, ast.MatchValue):
            values.append(node.value)
    return sorted({(c.lineno, c.value) for v in values for c in _state_names_in(v, names)})


def test_only_runfolder_spells_a_state_name():
    """A state is compared, returned or written through moco3.runfolder.states' constants
    (DONE, DIVERGED, ...), so renaming one is a one-line change."""
    assert not _found_outside_runfolder(lambda name, path: [
        f"line {line}: {value!r}" for line, value in _state_literals(path)
        if (name, value) not in ALLOWED_STATE_LITERALS])


def test_the_state_scan_finds_a_spelled_state(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        'def f(state, row):\n'
        '    """done"""\n'
        '    if state == "done":\n'
        '        return "diverged" if row else "failed"\n'
        '    if row.get("event") == "diverged" or row["phase"] == "done":\n'
        '        write(state="preempted", event="failed", phase="done")\n'
        '    s = {"state": "pending", "event": "diverged"}\n'
        '    return state in ("running", "later"), f"done {s}", "unknown"\n')
    assert _state_literals(module) == [(3, "done"), (4, "diverged"), (4, "failed"),
                                       (6, "preempted"), (7, "pending"), (8, "running"),
                                       (8, "unknown")]


MAX_FUNCTION_LINES = 80


def test_no_function_is_over_80_lines():
    """Every function and method of the four layers reads on about one screen."""
    long = {}
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long[f"{path.relative_to(REPO)}::{node.name}"] = lines
    assert not long
