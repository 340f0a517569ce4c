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


def _imported_modules(source: str) -> list[str]:
    """Every module ``source`` imports; ``from a import b`` gives ``a`` and, where b is a module, ``a.b``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return found


def _imports_of_test_code(source: str) -> list[str]:
    """The modules ``source`` imports that are test code, not support: a conftest or a ``test_*`` module."""
    found: list[str] = []
    for name in _imported_modules(source):
        parent = name.rpartition(".")[0]
        if _is_test_code(name) and not (parent and _is_test_code(parent)):
            found.append(name)
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


def test_the_emulator_imports_nothing_from_batchd() -> None:
    """The emulator is an independent oracle of Ollama's behaviour: it never borrows batchd's idea of it."""
    folder = PACKAGE.parent / "tests" / "support" / "emulator"
    borrowing = sorted(p.name for p in folder.glob("*.py") if _borrows_from_batchd(p.read_text()))
    assert borrowing == []
    assert {"state.py", "routes.py", "eras.py"} <= {p.name for p in folder.glob("*.py")}
    assert _borrows_from_batchd("from batchd.backends.ollama_facts import ERAS\n")  # the check can fail
    assert not _borrows_from_batchd("from tests.support.emulator.eras import ERAS\n")


def _borrows_from_batchd(source: str) -> bool:
    return any(name == "batchd" or name.startswith("batchd.") for name in _imported_modules(source))
