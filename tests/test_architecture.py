"""The import rules of ARCHITECTURE.md that import-linter cannot see (external packages, the clock)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _files("imagebuilder"), ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_never_imports_functions(path: Path) -> None:
    bad = {
        m
        for m in _imports(path)
        if m.split(".")[0] in {"api", "dashboard", "triggers", "orchestrators", "activities", "local_runtime"}
        or m.startswith(("azure.functions", "azure.durable_functions"))
    }
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _files("orchestrators"), ids=lambda p: str(p.relative_to(ROOT)))
def test_orchestrators_are_pure(path: Path) -> None:
    allowed_prefixes = (
        "azure.durable_functions",
        "azure.functions",
        "imagebuilder.template",
        "imagebuilder.pipeline",
        "orchestrators",
        "__future__",
        "typing",
        "collections",
        "dataclasses",
        "datetime",
        "json",
        "logging",
        "enum",
        "functools",
        "itertools",
    )
    bad = {m for m in _imports(path) if not m.startswith(allowed_prefixes)}
    assert not bad, f"{path} imports {bad}: orchestrators do no I/O and use no providers or store"
    src = path.read_text()
    for forbidden in ("time.sleep", "datetime.now(", "datetime.utcnow(", "uuid.uuid4(", "random."):
        assert forbidden not in src, f"{path} uses {forbidden}; use the durable context instead"


@pytest.mark.parametrize("path", _files("local_runtime"), ids=lambda p: str(p.relative_to(ROOT)))
def test_local_runtime_knows_nothing_of_image_building(path: Path) -> None:
    bad = {
        m
        for m in _imports(path)
        if m.split(".")[0] in {"imagebuilder", "api", "triggers", "orchestrators", "activities"}
    }
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _files("aibcli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_command_line_talks_http_only(path: Path) -> None:
    """`aib` works against any deployment: no Azure SDK, storage or Functions imports, and of the app only
    the template models (for `lint`); the local debug commands run in a child process."""
    app = {"api", "dashboard", "triggers", "orchestrators", "activities", "local_runtime", "imagebuilder"}
    bad = {
        m
        for m in _imports(path)
        if m.startswith("azure") or (m.split(".")[0] in app and not m.startswith("imagebuilder.template"))
    }
    assert not bad, f"{path} imports {bad}"
