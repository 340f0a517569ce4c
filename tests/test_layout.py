"""The house rules a reader relies on: SQL lives in the journal package, modules stay small and say their job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchd"
SQL = re.compile(r"\b(SELECT\s+\S|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|PRAGMA\s+\w)")
SQLITE = re.compile(r"^\s*(import sqlite3|from sqlite3 import)", re.MULTILINE)
#: "none over ~400 lines" (STYLE.md: most 100-300, none over ~500); slack for the formatter's line breaks
MAX_LINES = 440


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_sql_and_sqlite3_only_inside_the_journal_package() -> None:
    speaking = {str(p.relative_to(PACKAGE)) for p in _modules() if SQL.search(p.read_text())}
    importing = {str(p.relative_to(PACKAGE)) for p in _modules() if SQLITE.search(p.read_text())}
    outside = sorted(m for m in speaking | importing if not m.startswith("journal/"))
    assert outside == []
    # the patterns do find the journal's own SQL (a check that could not fail would prove nothing)
    assert {"journal/store.py", "journal/lifecycle.py", "journal/schema.py"} <= speaking
    assert "journal/connection.py" in importing


def test_every_module_is_small_and_opens_with_its_job() -> None:
    too_long = {
        str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}
    undocumented = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert undocumented == []


def test_architecture_lists_every_module() -> None:
    """docs/ARCHITECTURE.md is the map a new engineer reads first: every module is on it."""
    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`([\w/]+\.py)`", doc)) | set(re.findall(r"`([\w]+/)`", doc))
    missing = []
    for p in _modules():
        rel = p.relative_to(PACKAGE)
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        short, full = rel.name, str(rel)
        # a row may name the module alone (`runner.py`), with its folder (`backends/transport.py`), or
        # inside its folder's row where the folder is listed with the module names (`backends/` ... `ollama`)
        if full in named or (rel.parent == Path(".") and short in named):
            continue
        folder_row = next((line for line in doc.splitlines() if f"`{rel.parent}/`" in line), "")
        if f"`{p.stem}`" in folder_row or f"`{short}`" in folder_row:
            continue
        missing.append(full)
    assert missing == []


def _is_test_code(module: str) -> bool:
    return any(part == "conftest" or part.startswith("test_") for part in module.split("."))


def _imports_of_test_code(source: str) -> list[str]:
    """The modules ``source`` imports that are test code, not support: a conftest or a ``test_*`` module."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_test_code(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if _is_test_code(node.module) else [f"{node.module}.{a.name}" for a in node.names]
            found += [name for name in names if _is_test_code(name)]
    return found


def test_test_support_comes_from_tests_support_never_from_a_test_or_a_conftest() -> None:
    """Helpers live in tests/support/; a ``test_*.py`` or ``conftest.py`` is never imported as a library."""
    root = PACKAGE.parent
    files = sorted([*(root / "tests").rglob("*.py"), *(root / "bench").rglob("*.py")])
    offenders = {str(p.relative_to(root)): found for p in files if (found := _imports_of_test_code(p.read_text()))}
    assert offenders == {}
    # the check does find each way of importing test code (a check that could not fail would prove nothing)
    sample = "from tests.conftest import until\nfrom tests.run import test_runner\nimport tests.api.test_api\n"
    assert _imports_of_test_code(sample) == ["tests.conftest", "tests.run.test_runner", "tests.api.test_api"]
    assert _imports_of_test_code("from tests.support.waiting import until\nimport tests.support.api\n") == []
