"""The house rules a reader relies on: SQL lives in the journal package, modules stay small and say their job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchd"
SQL = re.compile(r"\b(SELECT\s+\S|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|PRAGMA\s+\w)")
SQLITE = re.compile(r"^\s*(import sqlite3|from sqlite3 import)", re.MULTILINE)
#: "none over ~400 lines" (STYLE.md: most 100-300, none over ~500); a little slack for a growing module
MAX_LINES = 420


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
    too_long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}
    undocumented = [str(p.relative_to(PACKAGE)) for p in _modules()
                    if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == []
