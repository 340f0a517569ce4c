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


#: bases whose subclasses declare fields in the class body on purpose (records, models, interfaces)
_DECLARING_BASES = {"BaseModel", "BaseSettings", "TypedDict", "NamedTuple", "Protocol", "ABC", "Enum", "Exception"}
#: interfaces: their methods may raise NotImplementedError
_INTERFACE_BASES = {"Protocol", "ABC"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _classes(sources: dict[str, str]) -> list[tuple[str, ast.ClassDef]]:
    return [
        (f"{where}:{node.name}", node)
        for where, text in sources.items()
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ClassDef)
    ]


def _inherits(name: str, wanted: set[str], bases: dict[str, set[str]], seen: frozenset[str] = frozenset()) -> bool:
    """Whether a class (by its simple name, across the package) derives from one of ``wanted``."""
    if name in wanted:
        return True
    return any(_inherits(b, wanted, bases, seen | {name}) for b in bases.get(name, set()) - seen)


def _raises_not_implemented(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(stmt, ast.Raise) and stmt.exc is not None and _name(stmt.exc) == "NotImplementedError"
        for stmt in fn.body
    )


def mixin_findings(sources: dict[str, str]) -> list[str]:
    """Classes that exist only to be mixed in: they annotate instance attributes their own ``__init__``
    never assigns (someone else's ``self`` is meant), or stub methods with ``NotImplementedError``
    without being a Protocol or an ABC. Records (dataclasses, pydantic models, TypedDicts, enums) and
    interfaces declare fields on purpose and are left alone."""
    classes = _classes(sources)
    bases = {node.name: {_name(b) for b in node.bases} for _, node in classes}
    found = []
    for where, node in classes:
        record = any(_name(d) == "dataclass" for d in node.decorator_list) or _inherits(
            node.name, _DECLARING_BASES, bases
        )
        interface = _inherits(node.name, _INTERFACE_BASES, bases)
        methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        init = next((m for m in methods if m.name == "__init__"), None)
        assigned = {
            t.attr
            for stmt in (ast.walk(init) if init else ())
            for t in (stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
        }
        declared = [
            s.target.id
            for s in node.body
            if isinstance(s, ast.AnnAssign) and s.value is None and isinstance(s.target, ast.Name)
            if _name(s.annotation) != "ClassVar"
        ]
        borrowed = sorted(set(declared) - assigned) if not record else []
        stubs = sorted(m.name for m in methods if _raises_not_implemented(m)) if not interface else []
        if borrowed or stubs:
            found.append(f"{where} declares {borrowed} without assigning them, stubs {stubs}")
    return found


_OLD_ATTEMPTS = '''
class Attempts:
    """``_execute``: one request, attempt after attempt (JobRunner mixed this in)."""

    settings: Settings
    job: Job
    backend: Backend
    metrics: JobMetrics
    rng: random.Random
    _conversation_asked: bool

    async def _wait_gate(self) -> bool:
        """Wait for the backend; True when the job must not go on (the runner's)."""
        raise NotImplementedError

    def _fail(self, exc: JobError) -> None:
        """The whole job cannot go on (the runner's)."""
        raise NotImplementedError

    async def _execute(self, req: Request) -> Outcome | None:
        return self._success(req, await self.backend.chat(req))
'''


def test_no_class_exists_only_to_be_mixed_in() -> None:
    """STYLE.md: a size limit is never a reason to split along no seam (no mixin made to fit)."""
    sources = {str(p.relative_to(PACKAGE)): p.read_text() for p in _modules()}
    assert mixin_findings(sources) == []
    # the rule catches the mixin it was written after (the runner's Attempts before issue [17])
    assert mixin_findings({"run/attempts.py": _OLD_ATTEMPTS}) == [
        "run/attempts.py:Attempts declares ['_conversation_asked', 'backend', 'job', 'metrics', 'rng', 'settings']"
        " without assigning them, stubs ['_fail', '_wait_gate']"
    ]
    # ...either half of it alone, and not a Protocol's stubs or a dataclass's fields
    assert mixin_findings({"m.py": "class M:\n    x: int\n    def __init__(self) -> None:\n        pass\n"})
    assert mixin_findings({"m.py": "class M:\n    def f(self) -> None:\n        raise NotImplementedError\n"})
    assert not mixin_findings(
        {"m.py": "class P(Protocol):\n    x: int\n    def f(self) -> None:\n        raise NotImplementedError\n"}
    )
    assert not mixin_findings({"m.py": "@dataclass\nclass D:\n    x: int\n"})
