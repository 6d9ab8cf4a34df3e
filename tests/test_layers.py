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
