"""The layering: runfolder (the contract) <- moco3 <- experiments, runfolder <- analysis.

Walks the imports of every module of the four packages (static, with ast: every `import`
and `from ... import`, also inside functions) and fails on an arrow against the flow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("runfolder", "moco3", "experiments", "analysis")
ALLOWED = {
    "runfolder": set(),
    "moco3": {"runfolder"},
    "experiments": {"runfolder", "moco3"},
    "analysis": {"runfolder"},
}


def imported_layers(path: Path) -> set[str]:
    """The project packages a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(LAYERS)
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_every_module_imports_only_downward(layer):
    modules = sorted((REPO / layer).rglob("*.py"))
    assert modules
    wrong = {str(p.relative_to(REPO)): sorted(imported_layers(p) - ALLOWED[layer] - {layer})
             for p in modules}
    assert not {k: v for k, v in wrong.items() if v}


def test_the_contract_and_the_analysis_never_import_torch():
    for layer in ("runfolder", "analysis"):
        for path in (REPO / layer).rglob("*.py"):
            tree = ast.parse(path.read_text())
            names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                     for a in n.names}
            names |= {n.module.split(".")[0] for n in ast.walk(tree)
                      if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
            assert "torch" not in names, path


# Collection literals outside runfolder/ that may spell contract names, with the reason.
# Keyed by (module, the literal's elements in order).
ALLOWED_SPELLINGS: dict[tuple[str, tuple[str, ...]], str] = {}


def _contract_spellings(path: Path) -> list[tuple[str, ...]]:
    """The tuple/list/set literals of `path` that re-spell part of the run-folder contract:
    2+ state names, 2+ gradient groups, or 3+ status.json/summary.json keys, and nothing else."""
    from runfolder.fields import GRAD_GROUPS, STATUS_KEYS, SUMMARY_EXTRA_KEYS, SUMMARY_KEYS
    from runfolder.states import STATES, UNKNOWN

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


def test_only_runfolder_spells_states_keys_and_groups():
    """Run states, their groupings and order, the status/summary key lists and the gradient
    groups are runfolder's data; the layers import them instead of listing them again."""
    wrong = {}
    for layer in ("moco3", "experiments", "analysis"):
        for path in sorted((REPO / layer).rglob("*.py")):
            name = str(path.relative_to(REPO))
            spelled = [v for v in _contract_spellings(path)
                       if (name, v) not in ALLOWED_SPELLINGS]
            if spelled:
                wrong[name] = spelled
    assert not wrong


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
    from runfolder.states import STATES, UNKNOWN

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
    """A state is compared, returned or written through runfolder.states' constants
    (DONE, DIVERGED, ...), so renaming one is a one-line change."""
    wrong = {}
    for layer in ("moco3", "experiments", "analysis"):
        for path in sorted((REPO / layer).rglob("*.py")):
            name = str(path.relative_to(REPO))
            spelled = [f"line {line}: {value!r}" for line, value in _state_literals(path)
                       if (name, value) not in ALLOWED_STATE_LITERALS]
            if spelled:
                wrong[name] = spelled
    assert not wrong


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
