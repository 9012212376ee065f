"""The package's layout is its architecture: stages on top, the shared core in layers below,
no layer importing one above it, no stage importing another, and modules small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
# Lowest first: a module may import from its own layer and those below.
LAYERS = ("core", "data", "models", "tracking", "reporting", "search")
STAGE_LINES, CORE_LINES = 250, 400
MODULES = sorted(PACKAGE.rglob("*.py"))


def layer(module: str) -> int:
    """The rank of `pipeline.<...>`: a sub-package's, or above them all for a stage."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    # The package's own __init__, which every process of the pipeline runs first: as low as the
    # core, whose interrupts it arranges there (a stage's worker dies with the stage).
    return len(LAYERS) if len(parts) == 2 else 0


def name_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            for alias in node.names:
                # `from pipeline import models` names a package; `from pipeline.x import f` a module
                joined = f"{node.module}.{alias.name}"
                is_module = (ROOT.joinpath(*joined.split("."))).with_suffix(".py").exists() or (
                    ROOT.joinpath(*joined.split(".")) / "__init__.py"
                ).exists()
                found.add(joined if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline")}
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda path: name_of(path))
def test_a_module_imports_nothing_from_a_layer_above_it_and_no_stage_another(path: Path) -> None:
    me = name_of(path)
    for imported in imports_of(path):
        if layer(me) == len(LAYERS):
            assert layer(imported) < len(LAYERS), f"stage {me} imports stage {imported}"
        else:
            assert layer(imported) <= layer(me), f"{me} imports {imported}, a layer above"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: name_of(path))
def test_a_module_is_small_enough_to_hold_in_ones_head(path: Path) -> None:
    limit = STAGE_LINES if layer(name_of(path)) == len(LAYERS) else CORE_LINES
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{name_of(path)}: {lines} lines, more than {limit}"
