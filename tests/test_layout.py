"""The house rules a reader relies on: SQL lives in the journal package, modules stay small and say their job,
and the import graph runs one way, bottom to top by stage, with no circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchd"
SQL = re.compile(r"\b(SELECT\s+\S|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|PRAGMA\s+\w)")
SQLITE = re.compile(r"^\s*(import sqlite3|from sqlite3 import)", re.MULTILINE)
#: "none over ~400 lines" (STYLE.md: most 100-300, none over ~500); slack for the formatter's line breaks
MAX_LINES = 440
#: reviewed exceptions: the daemon wires every stage (its narrow read-only window for ``status/`` is
#: ``window.StatusWindow``)
#: the runner grew by its task supervision, the disk pause of its feeder and lanes and the stall check
#: ([18]; its journal writes went to ``run/record.py``, the watchdog's logic to ``run/stall.py``): the
#: next change to it splits the stop/cancel control task out
#: the claimer gained [22]'s per-owner room and hostile-file handling and [18]'s spool back-off: its ingest
#: half (``ingest``, ``_parse_into``, ``_owner_room``, ``_insert``) is the seam for the next split
#: [18] and [19] both added to the daemon (disk back-off; turns and notices) and the runner (supervision;
#: yielding): reviewed at merge, the next change to either splits out the runner's stop/cancel/yield control
#: config gained [watchdog], [schedule], [preview] and [notify]: its sections are the seam when it grows again
LONGER = {"daemon.py": 490, "run/runner.py": 500, "intake/claim.py": 460, "config.py": 460}


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
        rel: n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > LONGER.get(rel := str(p.relative_to(PACKAGE)), MAX_LINES)
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


# --- the import graph, drawn from the code ------------------------------------------------------------------

#: bottom to top; a module may import its own layer and any lower one, never a higher one
LAYERS = ("leaf", "backends", "journal", "intake", "run", "publish", "status", "api", "ops", "top")
#: the root modules that sit on top: they wire the stages together (``__init__`` is the package root)
TOP = frozenset({"daemon", "window", "service", "cli", "__main__"})


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    """``status/live.py`` -> ``status.live``; ``backends/__init__.py`` -> ``backends``; the root is ``__init__``."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer a module sits on: its package, ``top`` for the wiring at the root, else ``leaf``."""
    head = module.split(".")[0]
    if (PACKAGE / head).is_dir():
        return head
    return "top" if head in TOP else "leaf"


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module's imports of other batchd modules: module level, ``if TYPE_CHECKING:`` and inside functions.

    ``from batchd.x import y`` is an edge to ``x.y`` when that is a module, else to ``x`` (the package's
    ``__init__`` or the module that defines ``y``).
    """
    modules = {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def resolve(dotted: str) -> str | None:
        if dotted == "batchd":
            return "__init__"
        if not dotted.startswith("batchd."):
            return None
        name = dotted.removeprefix("batchd.")
        return name if name in modules else None

    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    here = ["batchd", *name.split(".")] if name != "__init__" else ["batchd"]
                    here = here if is_package else here[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, *([base] if base else [])])
                for alias in node.names:
                    targets.append(resolve(f"{base}.{alias.name}") or resolve(base))
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def upward_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The edges that point from a lower layer to a higher one."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return {(src, dst) for src, dsts in graph.items() for dst in dsts if rank[layer_of(dst)] > rank[layer_of(src)]}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_no_module_imports_a_higher_layer() -> None:
    """Each stage imports its own package and the layers below it, never one above (``LAYERS``)."""
    upward = upward_edges(import_graph())
    assert sorted(upward) == []


def test_the_import_graph_has_no_circle() -> None:
    assert import_cycles(import_graph()) == []


def test_backends_never_see_the_settings() -> None:
    """``backends/`` is a leaf: built from plain arguments by ``run.connect``, it never reads ``Settings``."""
    graph = import_graph()
    importers = {m for m, deps in graph.items() if "config" in deps}
    assert sorted(m for m in importers if layer_of(m) == "backends") == []
    assert "run.connect" in importers  # the one place that builds a backend from the settings


def test_the_package_root_imports_nothing_of_its_own() -> None:
    """``batchd/__init__.py`` runs before every module of the package: it holds ``__version__`` and
    imports nothing of batchd, so any module may read the version (it counts as a root leaf)."""
    assert import_graph()["__init__"] == set()
    assert layer_of("__init__") == "leaf"


def test_the_graph_checks_can_fail(tmp_path: Path) -> None:
    """The checks above prove something only if they see real edges and flag bad ones."""
    graph = import_graph()
    assert "journal" in graph["run.runner"]  # a module-level import
    assert "service" in graph["cli"]  # inside a function
    assert "ops.commands" in graph["cli"]  # ``from batchd.ops import commands``: the module, not the package
    assert layer_of("run.runner") == "run" and layer_of("config") == "leaf" and layer_of("cli") == "top"
    assert upward_edges({"config": {"daemon", "errors"}, "daemon": set(), "errors": set()}) == {("config", "daemon")}
    assert upward_edges({"journal.store": {"backends.base"}, "backends.base": set()}) == set()
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # relative imports, ``import x.y``, a function-local and a TYPE_CHECKING import, in a package of its own
    pkg = tmp_path / "batchd"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "leaf.py").write_text("import batchd.sub.deep\n")
    (pkg / "sub" / "__init__.py").write_text("from . import deep\n")
    (pkg / "sub" / "deep.py").write_text("def f():\n    from ..leaf import X\n    from .. import leaf\n")
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from batchd.sub import deep\n"
    (pkg / "top.py").write_text(typing_only)
    assert import_graph(pkg) == {
        "__init__": set(),
        "leaf": {"sub.deep"},
        "sub": {"sub.deep"},
        "sub.deep": {"leaf"},
        "top": {"sub.deep"},
    }


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
