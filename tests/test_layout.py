"""The package's layout rules, read from the source with ast (nothing is imported):

- notifyd/core is the pure core: no module in it, nor anything it imports from notifyd, imports
  asyncio, asyncpg, redis, socket, uvloop or websockets' I/O adapters, nor a notifyd module
  outside notifyd/core;
- tests/units, the unit tests of the core, import nothing of that either, so `pytest tests/units`
  runs without I/O in seconds;
- every module under notifyd/ opens with a triple-quoted docstring (what it owns, what it must
  not import), so `help()` shows it.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT

PACKAGE = ROOT / "notifyd"
UNITS = ROOT / "tests" / "units"

# Top-level modules (and packages' I/O parts) the core must not import.
IO_MODULES = (
    "asyncio",
    "asyncpg",
    "redis",
    "socket",
    "uvloop",
    "websockets.asyncio",
    "websockets.sync",
    "websockets.legacy",
)


def module_path(name: str) -> Path | None:
    """The file of a notifyd module or of a tests/units one (`units.fakes`), if it is one."""
    parts = name.split(".")
    if parts[0] == "notifyd":
        base = ROOT
    elif parts[0] == "units":
        base = ROOT / "tests"
    else:
        return None
    path = base.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "tests" if path.is_relative_to(UNITS) else ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> Iterator[str]:
    """Every module a file imports at run time, at any depth (function bodies too); for
    `from a import b`, both `a` and `a.b` (b may be a module); relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for alt in child.orelse:
                    yield from walk(alt)
                continue
            if isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    source = f"{base}.{child.module}" if child.module else base
                else:
                    source = child.module or ""
                yield source
                yield from (f"{source}.{alias.name}" for alias in child.names)
            yield from walk(child)

    yield from walk(ast.parse(path.read_text(), str(path)))


def breaches(path: Path) -> dict[tuple[str, str], list[str]]:
    """(importer, what it must not import) → the chain from `path`, following the imports of
    notifyd and tests/units modules transitively."""
    found: dict[tuple[str, str], list[str]] = {}
    seen: set[Path] = set()

    def visit(p: Path, chain: list[str]) -> None:
        if p in seen:
            return
        seen.add(p)
        importer = module_name(p)
        for imported in imports(p):
            forbidden = next(
                (m for m in IO_MODULES if imported == m or imported.startswith(m + ".")), None
            )
            if forbidden is None and imported.startswith("notifyd."):
                outside = not imported.startswith("notifyd.core")
                if outside and module_path(imported) is not None:
                    forbidden = imported
            if forbidden is not None:
                found.setdefault((importer, forbidden), [*chain, importer, forbidden])
                continue
            target = module_path(imported)
            if target is not None:
                visit(target, [*chain, importer])

    visit(path, [])
    return found


def _check(roots: list[Path]) -> list[str]:
    return sorted({" -> ".join(chain) for root in roots for chain in breaches(root).values()})


def test_the_core_imports_no_io_and_nothing_outside_the_core() -> None:
    core = sorted((PACKAGE / "core").glob("*.py"))
    assert len(core) > 5
    units = sorted(UNITS.glob("*.py"))
    assert len(units) > 5
    bad = _check(core + units)
    assert not bad, (
        "the pure core imports I/O or notifyd modules outside notifyd/core:\n" + "\n".join(bad)
    )


def test_the_check_follows_imports_within_notifyd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check itself, on a planted tree: it sees I/O and modules outside the core where they
    are, and what a module imports through another core module."""
    app = breaches(PACKAGE / "app.py")
    assert ("notifyd.app", "asyncio") in app
    planted = {
        "notifyd/core/a.py": "from notifyd.core import b\n",
        "notifyd/core/b.py": "def f() -> None:\n    import asyncio\n",
        "notifyd/core/c.py": "from notifyd.edge.server import Connection\n",
        "notifyd/edge/server.py": "import socket\n",
    }
    for name, text in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "UNITS", tmp_path / "tests" / "units")
    through = breaches(tmp_path / "notifyd/core/a.py")
    assert through == {
        ("notifyd.core.b", "asyncio"): ["notifyd.core.a", "notifyd.core.b", "asyncio"]
    }
    outside = breaches(tmp_path / "notifyd/core/c.py")
    assert ("notifyd.core.c", "notifyd.edge.server") in outside


def test_every_module_opens_with_a_docstring() -> None:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        first = tree.body[0] if tree.body else None
        is_docstring = (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        )
        if not is_docstring or not path.read_text().lstrip().startswith('"""'):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, "modules that do not open with a triple-quoted docstring:\n" + "\n".join(
        missing
    )


def test_the_layout_page_lists_every_module() -> None:
    """The layout page's module table names each module of the package once, and nothing
    else."""
    section = (ROOT / "docs" / "layout.md").read_text()
    listed = re.findall(r"^\| `([a-z_/]+\.py)` \|", section, re.MULTILINE)
    modules = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
    ]
    assert sorted(listed) == sorted(modules)
