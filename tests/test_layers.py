"""The layers that import-linter cannot check, and the map of the rooms.

``fluorobench_c.py`` is a single module, which import-linter cannot take as a root package
(pyproject.toml names it as an external module there), so its own imports are checked here.
docs/architecture.md names every module of ``builder/``, ``synthesis/`` and the loader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: What the loader may import of the project: the tensor definitions and the package format.
LOADER_MAY_IMPORT = ("synthesis", "builder.package")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _project(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in ("builder", "synthesis", "fluorobench_c")}


def test_the_loader_imports_only_the_layers_below_it():
    project = _project(imported_modules(ROOT / "fluorobench_c.py"))
    assert project, "fluorobench_c.py imports nothing of the project: the check saw nothing"
    wrong = sorted(
        n for n in project if not any(n == a or n.startswith(a + ".") for a in LOADER_MAY_IMPORT)
    )
    assert not wrong, f"fluorobench_c.py imports {wrong}; it may import only {LOADER_MAY_IMPORT}"


def test_the_import_check_catches_a_wrong_import(tmp_path: Path):
    bad = tmp_path / "loader.py"
    bad.write_text("def f():\n    from builder.assembly.pipeline import build\n    import torch\n")
    assert _project(imported_modules(bad)) == {
        "builder.assembly.pipeline",
        "builder.assembly.pipeline.build",
    }


def _modules() -> list[str]:
    """Every module of the project as ``room/module`` paths (packages by their folder)."""
    out = ["fluorobench_c.py"]
    for top in ("builder", "synthesis"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name != "__init__.py":
                out.append(path.relative_to(ROOT).as_posix())
    return out


@pytest.mark.parametrize("module", _modules())
def test_every_module_is_named_in_the_architecture(module: str):
    """docs/architecture.md's table of rooms names each module: as ``name`` in the row of its
    room (the row names the room's folder, or ``folder/*.py`` for a package's own modules,
    or a folder above it)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    if module == "fluorobench_c.py":
        assert any(row.startswith("| `fluorobench_c.py`") for row in rows)
        return
    path = Path(module)
    rooms = [f"`{path.parent.as_posix()}/*.py`"]
    rooms += [f"`{p.as_posix()}/`" for p in path.parents if p.as_posix() != "."]
    mine = [row for row in rows if any(row.startswith(f"| {room}") for room in rooms)]
    assert mine, f"docs/architecture.md has no row for the room of {module}"
    assert any(f"`{path.stem}`" in row for row in mine), (
        f"{module} is not named in its room's row of docs/architecture.md"
    )
