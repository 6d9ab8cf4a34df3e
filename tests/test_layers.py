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
ALLOWED_SPELLINGS: dict[tuple[str, tuple[str, ...]], str] = {
    ("analysis/rundata.py", ("pending", "unknown")):
        "the one place that expects no metrics: not yet started, or no readable status.json",
}


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
