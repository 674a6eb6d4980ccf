"""The repository's shape: small modules, a light public face, no import loops.

Fast tests that read the source tree (and one short subprocess); they run no
node and no simulation:

- no module under ``core/``, ``cluster/``, ``sim/`` or ``meshlimit/`` is over
  :data:`MAX_MODULE_LINES` lines (a module that long does several jobs);
- ``from meshlimit import Limiter`` loads none of :data:`HEAVY_MODULES`: the
  in-process limiter must not pay for the cluster's event loop and codec;
- ``cluster/daemon/`` is a package, and nothing in ``cluster/`` imports the
  public face (the rule itself lives in ``tests/test_purity.py``; this reuses it);
- the module-level imports among meshlimit's modules form no cycle.

The import graph (:func:`import_graph`) counts what runs at import time: the
statements of a module's body, classes and ``try``/``if`` blocks included, but
not function bodies (they import when called) and not ``if TYPE_CHECKING:``
blocks (they never run). ``from pkg import name`` is an edge to ``pkg.name`` when
that is a module and to ``pkg`` otherwise; the implicit import of a module's
parent packages is not an edge, or every package re-exporting its modules
would be a "cycle" that Python resolves without trouble.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_purity as purity

REPO = Path(__file__).resolve().parents[1]
#: Longest module allowed, in lines. Why 600: the house aims at 300-500 lines a module;
#: past 600 a module is doing more than one job and is due to be split.
MAX_MODULE_LINES = 600
#: Folders holding meshlimit's modules (the test, script and doc folders are not modules).
SOURCE_DIRS = ("core", "cluster", "sim", "meshlimit")
#: What ``from meshlimit import Limiter`` must not load: the cluster's machinery.
HEAVY_MODULES = ("asyncio", "msgpack", "aiohttp")


def package_dirs(root: Path) -> dict[str, Path]:
    """Import name -> folder, as ``pyproject.toml`` maps them (``meshlimit.core`` -> core/)."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = pyproject["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def source_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of every mapped folder."""
    modules: dict[str, Path] = {}
    for prefix, folder in package_dirs(root).items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((prefix, *parts))] = path
    return modules


# --- module size ----------------------------------------------------------------------------


def long_modules(root: Path, limit: int = MAX_MODULE_LINES) -> list[tuple[str, int]]:
    """``(path, lines)`` of every source module longer than ``limit`` lines, longest first."""
    found = []
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > limit:
                found.append((path.relative_to(root).as_posix(), lines))
    return sorted(found, key=lambda item: -item[1])


def test_no_module_is_over_the_line_limit() -> None:
    found = long_modules(REPO)
    assert not found, f"modules over {MAX_MODULE_LINES} lines (split them by job):\n" + "\n".join(
        f"  {path}: {lines} lines" for path, lines in found
    )


# --- the public face ------------------------------------------------------------------------

#: Run in a fresh interpreter: what the face loads, and that the names work.
_FACE_PROBE = """
import json, sys
from meshlimit import Decision, Limiter, Rule
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
limiter = Limiter(default="2/minute", clock=lambda: 0)
allowed = [limiter.check("acme").allowed for _ in range(3)]
decision_ok = isinstance(limiter.check("acme", cost=0), Decision)
rule_ok = Rule.parse("10/s").limit == 10
import meshlimit
node_before = "meshlimit.node" in sys.modules
node_class = meshlimit.Node.__module__
print(json.dumps({{
    "loaded": loaded, "allowed": allowed, "decision_ok": decision_ok, "rule_ok": rule_ok,
    "node_before": node_before, "node_class": node_class,
    "dir_has_names": set(meshlimit.__all__) <= set(dir(meshlimit)),
}}))
"""


def test_importing_the_limiter_loads_no_cluster_machinery(tmp_path: Path) -> None:
    probe = _FACE_PROBE.format(heavy=HEAVY_MODULES)
    # A fresh interpreter outside the repository: nothing this test process loaded counts.
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["loaded"] == [], f"`from meshlimit import Limiter` loaded {seen['loaded']}"
    assert seen["allowed"] == [True, True, False]
    assert seen["decision_ok"] and seen["rule_ok"] and seen["dir_has_names"]
    assert seen["node_before"] is False, "meshlimit.node loaded before Node was asked for"
    assert seen["node_class"] == "meshlimit.node"


#: Run in a fresh interpreter where the daemon extra's modules cannot be imported: what
#: ``pip install meshlimit`` (no extras) gives the library, the embedded node and the client.
_NO_DAEMON_EXTRAS_PROBE = """
import json, sys
from importlib.machinery import ModuleSpec

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Blocked())
from meshlimit import Limiter, Rule
limiter = Limiter("1/minute", clock=lambda: 0)
allowed = [limiter.check("a").allowed for _ in range(2)]
multi = str(Rule.parse("10/second;1000/hour"))
from meshlimit.client import AsyncClient, Client
client = Client("127.0.0.1:1", on_error="deny").check("a")
from meshlimit.node import Node
from meshlimit.sync import SyncNode
from meshlimit.cli import main
code = main(["node", "--bind", "127.0.0.1:1"])
print(json.dumps({{
    "allowed": allowed, "multi": multi, "fallback": client.fallback, "node_exit": code,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r}),
}}))
"""
#: The daemon extra: the library must work without these.
DAEMON_EXTRA = ("aiohttp", "prometheus_client")


def test_the_library_node_and_client_need_no_daemon_extras(tmp_path: Path) -> None:
    probe = _NO_DAEMON_EXTRAS_PROBE.format(blocked=DAEMON_EXTRA)
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["allowed"] == [True, False] and seen["multi"] == "10/second;1000/hour"
    assert seen["fallback"] is True and seen["loaded"] == []
    assert seen["node_exit"] == 1
    assert "pip install 'meshlimit[daemon]'" in done.stderr and "Traceback" not in done.stderr
    # And the package says so: the library's own dependencies hold none of them.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    base = " ".join(pyproject["project"]["dependencies"])
    extras = pyproject["project"]["optional-dependencies"]
    for name in (*DAEMON_EXTRA, "hiredis"):
        assert name not in base and any(name in d for d in extras["daemon"])
    assert any("hiredis" in d for d in extras["client"]) and "web" in extras
    assert any(d.startswith("meshlimit[daemon") for d in extras["test"])


def test_unknown_names_of_the_face_raise_attribute_error() -> None:
    import meshlimit

    with pytest.raises(AttributeError, match="NoSuchName"):
        meshlimit.NoSuchName  # noqa: B018 - the access is the test


# --- the cluster layer ----------------------------------------------------------------------


def test_the_daemon_is_a_package() -> None:
    assert (REPO / "cluster" / "daemon" / "__init__.py").is_file()
    assert "meshlimit.cluster.daemon" in source_modules(REPO)


def test_cluster_never_imports_the_public_face() -> None:
    # The layering rule is tests/test_purity.py's: cluster code may import only
    # meshlimit.core and meshlimit.cluster, never `meshlimit` or `meshlimit.node`.
    for layer in ("cluster", "cluster-io"):
        for face in ("meshlimit", "meshlimit.node", "meshlimit.limiter"):
            assert not purity._internal_ok(layer, face), (layer, face)
    cluster = REPO / "cluster"
    found = [
        str(violation)
        for path, policy in purity.files_to_check(REPO)
        if path.is_relative_to(cluster)
        for violation in purity.check_file(REPO, path, policy)
        if violation.message.startswith("layering:")
    ]
    assert not found, "cluster/ reaches above its layer:\n" + "\n".join(found)


# --- import cycles --------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement that runs when the module is imported (see the module docstring)."""
    for statement in body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield statement
        if isinstance(statement, ast.If):
            if not _is_type_checking(statement.test):
                yield from _import_time_statements(statement.body)
            yield from _import_time_statements(statement.orelse)
        elif isinstance(statement, ast.ClassDef | ast.With | ast.For | ast.While):
            yield from _import_time_statements(statement.body)
            yield from _import_time_statements(getattr(statement, "orelse", []))
        elif isinstance(statement, ast.Try | ast.TryStar):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _import_time_statements(block)
            for handler in statement.handlers:
                yield from _import_time_statements(handler.body)


def _absolute(statement: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module ``from ... import`` names, relative imports resolved."""
    if statement.level == 0:
        return statement.module or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (statement.level - 1)])
    return f"{base}.{statement.module}" if statement.module else base


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the meshlimit modules it imports at import time."""
    modules = source_modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for statement in _import_time_statements(tree.body):
            if isinstance(statement, ast.Import):
                targets.update(alias.name for alias in statement.names)
            elif isinstance(statement, ast.ImportFrom):
                base = _absolute(statement, module, is_package)
                for alias in statement.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None; deterministic (sorted walk)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt in done:
                continue
            path.append(nxt)
            on_path.add(nxt)
            stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_meshlimit_has_no_import_cycles() -> None:
    graph = import_graph(REPO)
    assert "meshlimit.cluster.node" in graph and "meshlimit.sim.world" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def _plant(root: Path, files: dict[str, str]) -> Path:
    (root / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "meshlimit" = "meshlimit", "meshlimit.sim" = "sim" }\n'
    )
    for rel, text in {"meshlimit/__init__.py": "", "sim/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cycle_finder_names_a_planted_cycle(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "sim/world.py": "from .checkers import Checkers\n",
            "sim/checkers.py": "import json\ntry:\n    from meshlimit.sim import world\nexcept ImportError:\n    pass\n",
        },
    )
    graph = import_graph(root)
    assert graph["meshlimit.sim.checkers"] == {"meshlimit.sim.world"}  # a module, not the package
    assert find_cycle(graph) == [
        "meshlimit.sim.checkers",
        "meshlimit.sim.world",
        "meshlimit.sim.checkers",
    ]


def test_cycle_finder_ignores_type_checking_and_function_imports(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "sim/world.py": "from .checkers import Checkers\n",
            "sim/checkers.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .world import World\n"
                "def later():\n    from meshlimit.sim.world import World\n"
                "class C:\n    import meshlimit\n"
            ),
            "sim/__init__.py": "from .world import *\n",
        },
    )
    graph = import_graph(root)
    assert graph["meshlimit.sim.checkers"] == {"meshlimit"}  # the class body runs at import
    assert graph["meshlimit.sim"] == {"meshlimit.sim.world"}
    assert find_cycle(graph) is None
