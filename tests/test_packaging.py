"""Packaging: every import is a declared dependency, and every package folder is installed.

Both checks read ``pyproject.toml`` and the source tree; neither builds a wheel (the wheel itself
is built, installed and run by ``scripts/wheel_smoke.sh`` in CI).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def pyproject() -> dict:
    """The parsed ``pyproject.toml`` of the repository."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_roots() -> dict[str, str]:
    """``{package: folder}`` from ``[tool.setuptools] package-dir``, e.g. mlff.potentials."""
    return dict(pyproject()["tool"]["setuptools"]["package-dir"])


@dataclass(frozen=True)
class ImportUse:
    """One absolute import: top-level module name, where, and whether ImportError is caught."""

    module: str
    path: str
    line: int
    guarded: bool


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in IMPORT_ERRORS for t in types)


def _dynamic_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("x")`` or ``__import__("x")`` with a literal."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value if not first.value.startswith(".") else None
    return None


def imports_in(source: str, path: str = "<string>") -> list[ImportUse]:
    """Every absolute import in ``source``, at module level or inside functions and classes.

    An import is ``guarded`` when it sits in the body of a ``try`` whose handlers catch
    ``ImportError`` or ``ModuleNotFoundError`` (an optional dependency).
    """
    uses: list[ImportUse] = []

    def add(name: str, node: ast.AST, guarded: bool) -> None:
        uses.append(ImportUse(name.split(".")[0], path, node.lineno, guarded))

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, guarded)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            add(node.module, node, guarded)
        elif isinstance(node, ast.Call) and (module := _dynamic_import(node)):
            add(module, node, guarded)
        if isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)):
            inner = guarded or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, inner)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(source, filename=path), False)
    return uses


def normalise(name: str) -> str:
    """A distribution name in PEP 503 normal form (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: Iterable[str]) -> set[str]:
    """Normalised distribution names of PEP 508 requirement strings."""
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"pyproject.toml: cannot read the requirement {requirement!r}"
        names.add(normalise(match.group(1)))
    return names


def undeclared(
    uses: Iterable[ImportUse],
    required: set[str],
    optional: set[str],
    distributions: Mapping[str, list[str]],
    first_party: set[str],
) -> list[str]:
    """One line per third-party import not covered by the declared dependencies.

    ``required``/``optional``: normalised names of ``[project] dependencies`` and of all
    optional extras; ``distributions``: ``{top-level module: [distribution, ...]}`` as from
    ``importlib.metadata.packages_distributions()`` (a module missing there is taken to be its
    own distribution). An extra covers only guarded imports.
    """
    problems = []
    for use in uses:
        if use.module in sys.stdlib_module_names or use.module in first_party:
            continue
        where = f"{use.path}:{use.line}: import {use.module}"
        # a module that is not installed (an optional extra) is taken to share its name
        dists = {normalise(d) for d in distributions.get(use.module, [use.module])}
        if dists & required:
            continue
        elif dists & optional and use.guarded:
            continue
        elif dists & optional:
            problems.append(
                f"{where}: {sorted(dists)} is only an optional extra, but the import is not "
                "inside try/except ImportError"
            )
        else:
            problems.append(f"{where}: {sorted(dists)} is not in [project] dependencies")
    return problems


def declared() -> tuple[set[str], set[str]]:
    """Normalised names of the required and of the optional (any extra) dependencies."""
    project = pyproject()["project"]
    optional = [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return requirement_names(project["dependencies"]), requirement_names(optional)


def source_files() -> list[Path]:
    """Every ``.py`` file of the installed package, under each ``package-dir`` folder."""
    return sorted(p for folder in package_roots().values() for p in (REPO / folder).rglob("*.py"))


def test_every_third_party_import_is_declared() -> None:
    files = source_files()
    assert len(files) > 20, f"found only {len(files)} source files under {package_roots()}"
    uses = [
        use
        for path in files
        for use in imports_in(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    required, optional = declared()
    first_party = {name.split(".")[0] for name in package_roots()}
    problems = undeclared(
        uses, required, optional, importlib.metadata.packages_distributions(), first_party
    )
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


SYNTHETIC = """
import numpy as np
import os.path


def progress():
    from tqdm import tqdm
    return tqdm


def hdf5():
    try:
        import tables
    except ImportError:
        tables = None
    return tables


import tables as tables_unguarded
import mlff.graph
"""
SYNTHETIC_DISTRIBUTIONS = {"numpy": ["numpy"], "tqdm": ["tqdm"], "tables": ["tables"]}


def test_imports_in_finds_function_level_and_guarded_imports() -> None:
    uses = imports_in(SYNTHETIC)
    assert [(u.module, u.guarded) for u in uses] == [
        ("numpy", False),
        ("os", False),
        ("tqdm", False),
        ("tables", True),
        ("tables", False),
        ("mlff", False),
    ]


def test_checker_flags_an_undeclared_import() -> None:
    uses = imports_in(SYNTHETIC, "synthetic.py")
    problems = undeclared(uses, {"numpy"}, {"tables"}, SYNTHETIC_DISTRIBUTIONS, {"mlff"})
    assert len(problems) == 2, problems
    assert problems[0].startswith("synthetic.py:7: import tqdm: ['tqdm'] is not in [project]")
    assert problems[1].startswith("synthetic.py:19: import tables: ['tables'] is only an optional")
    # declaring tqdm leaves only the unguarded use of the extra
    fixed = undeclared(uses, {"numpy", "tqdm"}, {"tables"}, SYNTHETIC_DISTRIBUTIONS, {"mlff"})
    assert [p.split(":")[1] for p in fixed] == ["19"]


def test_checker_takes_a_missing_module_as_its_own_distribution() -> None:
    guarded = imports_in("try:\n    import tables\nexcept ImportError:\n    pass\n")
    assert undeclared(guarded, set(), {"tables"}, {}, set()) == []
    assert undeclared(imports_in("import nosuchmodule"), {"numpy"}, {"tables"}, {}, set()) == [
        "<string>:1: import nosuchmodule: ['nosuchmodule'] is not in [project] dependencies"
    ]


def test_requirement_names_are_normalised() -> None:
    assert requirement_names(
        ["PyYAML>=6", "ase >=3.29", "e3nn[extra]>=0.5; python_version>'3'"]
    ) == {
        "pyyaml",
        "ase",
        "e3nn",
    }


def discovered_packages(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The packages setuptools would install, from ``pyproject.toml`` alone (no build)."""
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)
    dist = Distribution()
    dist.parse_config_files(filenames=["pyproject.toml"])
    dist.set_defaults()  # setuptools' automatic discovery, as a build runs it
    return set(dist.packages or [])


def test_discovered_packages_cover_every_package_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = set()
    for package, folder in package_roots().items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            expected.add(".".join((package, *relative)))
    assert {"mlff", "mlff.training", "mlff.potentials", "mlff.workflows"} <= expected
    missing = expected - discovered_packages(monkeypatch)
    assert not missing, f"pyproject.toml would leave these packages out of the wheel: {missing}"
