"""The arrows between the parts point one way (docs/DESIGN.md, "Layers"), read from the source.

Every import of ``optispace`` or ``primitives`` in the source, at the top of a module or inside a
function, goes to the module's own part or to a part of a lower layer; parts of one layer do not
import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

#: Lowest first. A part is a module or package: ``optispace.search`` covers its modules.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("primitives",),
    ("optispace.errors", "optispace.roles", "optispace.bundled"),
    ("optispace.chain",),
    ("optispace.native",),
    ("optispace.fused",),
    ("optispace.recipes", "optispace.sharded"),
    ("optispace.optimizer",),
    ("optispace",),  # the package's public API: Optimizer, RECIPES, parse_chain, ...
    ("optispace.proxies", "optispace.trial"),
    ("optispace.probes", "optispace.loggers"),
    ("optispace.search", "optispace.report"),
    ("optispace.api", "optispace.structure"),
    ("optispace.commands", "optispace.cli"),
    ("optispace.__main__",),  # python -m optispace, torchrun -m optispace
)


def part_of(module: str) -> str:
    """The longest part naming ``module``."""
    parts = [p for layer in LAYERS for p in layer if module == p or module.startswith(p + ".")]
    return max(parts, key=len)


def layer_of(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of optispace or primitives in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m.split(".")[0] in ("optispace", "primitives")]


SOURCES = sorted([*(ROOT / "optispace").rglob("*.py"), *(ROOT / "primitives").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_points_down_or_stays_in_its_part(path: Path) -> None:
    mine = part_of(module_name(path))
    for line, target in imports(path):
        theirs = part_of(target)
        if theirs == mine:
            continue
        assert layer_of(theirs) < layer_of(mine), (
            f"{path.relative_to(ROOT)}:{line}: {mine} imports {target}, "
            f"which is not in a lower layer ({theirs}, layer {layer_of(theirs)} >= {layer_of(mine)})"
        )


def test_every_part_of_the_source_has_a_layer() -> None:
    tops = {module_name(p).split(".")[:2][-1] for p in SOURCES if module_name(p).startswith("optispace.")}
    named = {p.split(".")[1] for layer in LAYERS for p in layer if p.startswith("optispace.")}
    assert tops <= named, f"give these a layer in LAYERS and docs/DESIGN.md: {sorted(tops - named)}"
