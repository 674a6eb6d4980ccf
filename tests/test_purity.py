"""The sans-IO rule and the layering, checked by walking imports with ``ast``.

Nothing under ``core/``, the sans-IO folders of ``cluster/`` (every module in
:data:`SANS_IO_DIRS`, so a new one is covered without editing a list) or ``sim/`` (less the files in :data:`SIM_IO`) may reach for
a clock, randomness, sockets, threads, processes or the event loop: time,
randomness and packets come in as arguments. ``cluster`` and ``sim`` may
import ``random.Random`` as a type (an injected, seeded instance), but never
call the module-level functions of ``random``, whose hidden global state would
make a run unrepeatable; ``core`` may not import ``random`` at all.

Layering: ``core`` imports only the standard library, mmh3 and
sortedcontainers, and nothing of meshlimit but itself; the sans-IO cluster
modules and ``sim`` import only core, the sans-IO cluster modules (and, for
sim, sim) -- never the asyncio runtime, the daemon or the top-level package.

The checker, :func:`check_tree`, takes a directory laid out like the
repository, so the tests below also run it on planted bad code.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Folders of ``cluster/`` that hold the sans-IO state machine and what it uses. Every
#: module in them, present or future, is checked; nothing else in ``cluster/`` is pure.
SANS_IO_DIRS = ("wire", "membership", "node")

#: Files under sim/ that legitimately do IO (command line, writing reports).
SIM_IO = ("cli.py", "report.py", "__main__.py")

#: Modules a pure module must never import, with the reason shown on failure.
FORBIDDEN = {
    "time": "reads the clock; take `now` as an argument",
    "datetime": "reads the clock; take `now` as an argument",
    "random": "draws hidden global randomness; take a seeded random.Random",
    "secrets": "draws OS randomness; take a seeded random.Random",
    "socket": "does network IO; return datagrams to send instead",
    "select": "does IO multiplexing; leave IO to the driver",
    "selectors": "does IO multiplexing; leave IO to the driver",
    "asyncio": "touches the event loop; leave it to the runtime",
    "uvloop": "touches the event loop; leave it to the runtime",
    "threading": "starts threads; leave concurrency to the driver",
    "multiprocessing": "starts processes; leave concurrency to the driver",
    "subprocess": "starts processes; leave them to the driver",
    "os": "reaches the operating system (files, environment, entropy)",
    "importlib": "imports dynamically, hiding what the module reaches for",
}

#: Builtins whose call is IO (or a hidden import) in pure code.
FORBIDDEN_CALLS = {
    "open": "opens a file",
    "input": "reads the terminal",
    "__import__": "imports dynamically, hiding what the module reaches for",
}

THIRD_PARTY = {
    "core": frozenset({"mmh3", "sortedcontainers"}),
    "cluster": frozenset({"mmh3", "sortedcontainers", "msgpack"}),
    # matplotlib: the optional `plot` extra, imported lazily by sim/report.py only.
    "sim": frozenset({"mmh3", "sortedcontainers", "msgpack", "matplotlib"}),
}

#: Layers whose files may depend on any installed package (the IO drivers and front-ends).
ANY_THIRD_PARTY = frozenset({"cluster-io"})

PACKAGE_DIRS = {"meshlimit.core": "core", "meshlimit.cluster": "cluster", "meshlimit.sim": "sim"}


@dataclass(frozen=True, order=True)
class Violation:
    """One finding: where, and what is wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Policy:
    """What the files of one layer may do."""

    layer: str  # "core", "cluster" (sans-IO), "cluster-io" (runtime, daemon) or "sim"
    pure: bool  # apply FORBIDDEN / FORBIDDEN_CALLS and the random rule


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    """The dotted name a file is imported as, and whether it is a package's __init__."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    top = {v: k for k, v in PACKAGE_DIRS.items()}[parts[0]]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([top, *parts[1:]]), is_package


def _module_exists(root: Path, dotted: str) -> bool:
    parts = dotted.split(".")
    for prefix, folder in PACKAGE_DIRS.items():
        if dotted == prefix or dotted.startswith(prefix + "."):
            base = root / folder
            rest = parts[len(prefix.split(".")) :]
            target = base.joinpath(*rest) if rest else base
            return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()
    return False


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module named by ``from X import ...`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return ""  # beyond the top-level package: Python itself would refuse
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _imports(root: Path, tree: ast.AST, module: str, is_package: bool):
    """Yield ``(line, absolute module, imported name or None)`` for every import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if base.startswith("meshlimit") and _module_exists(root, sub):
                    yield node.lineno, sub, None  # `from . import codec` imports a module
                else:
                    yield node.lineno, base, alias.name


def _internal_ok(layer: str, target: str) -> bool:
    """May a module of ``layer`` import the meshlimit module ``target``?"""
    if target == "meshlimit.core" or target.startswith("meshlimit.core."):
        return True
    if layer == "sim" and (target == "meshlimit.sim" or target.startswith("meshlimit.sim.")):
        return True
    if layer == "cluster-io":
        # The runtime and the daemon drive the node; they never import the public face.
        return target.startswith("meshlimit.cluster.")
    if layer in ("cluster", "sim") and target.startswith("meshlimit.cluster."):
        return target.split(".")[2] in SANS_IO_DIRS
    return False


def _layering(layer: str, line: int, target: str, rel: str) -> list[Violation]:
    top = target.split(".")[0]
    if not top:
        return [Violation(rel, line, "relative import reaches above the top-level package")]
    if top == "meshlimit":
        if _internal_ok(layer, target):
            return []
        hint = ""
        if target.startswith("meshlimit.cluster."):
            hint = f" (only the sans-IO folders {', '.join(SANS_IO_DIRS)} of cluster/)"
        elif target == "meshlimit.cluster":
            hint = " (import from the sans-IO module itself, not the cluster package)"
        return [Violation(rel, line, f"layering: {layer} may not import {target}{hint}")]
    if top == "__future__" or top in sys.stdlib_module_names or layer in ANY_THIRD_PARTY:
        return []
    if top in THIRD_PARTY[layer]:
        return []
    allowed = ", ".join(sorted(THIRD_PARTY[layer]))
    return [Violation(rel, line, f"{layer} may not depend on {top!r}; allowed: stdlib, {allowed}")]


def _purity(policy: Policy, tree: ast.AST, imports, rel: str) -> list[Violation]:
    found: list[Violation] = []
    random_modules: set[str] = set()  # names bound to the `random` module
    random_classes: set[str] = set()  # names bound to random.Random
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "random" and policy.layer != "core":
                    random_modules.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "random":
            for alias in node.names:
                if alias.name == "Random" and policy.layer != "core":
                    random_classes.add(alias.asname or "Random")
    for line, target, name in imports:
        top = target.split(".")[0]
        if top not in FORBIDDEN:
            continue
        if top == "random" and policy.layer != "core":
            if name is None or name == "Random":
                continue  # the module (checked per use below) or the type
            found.append(
                Violation(
                    rel,
                    line,
                    f"from random import {name}: module-level random "
                    "functions use hidden global state; draw from the injected random.Random",
                )
            )
            continue
        what = f"from {target} import {name}" if name else f"import {target}"
        found.append(Violation(rel, line, f"{what}: {top} {FORBIDDEN[top]}"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in random_modules
            and node.attr != "Random"
        ):
            found.append(
                Violation(
                    rel,
                    node.lineno,
                    f"{node.value.id}.{node.attr}: module-level random "
                    "functions use hidden global state; draw from the injected random.Random",
                )
            )
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(
                    Violation(rel, node.lineno, f"{func.id}(): {FORBIDDEN_CALLS[func.id]}")
                )
            unseeded = not node.args and not node.keywords
            is_random_class = (isinstance(func, ast.Name) and func.id in random_classes) or (
                isinstance(func, ast.Attribute)
                and func.attr == "Random"
                and isinstance(func.value, ast.Name)
                and func.value.id in random_modules
            )
            if unseeded and is_random_class:
                found.append(
                    Violation(
                        rel,
                        node.lineno,
                        "Random() without a seed seeds itself from the OS; "
                        "pass a seed or take the Random as an argument",
                    )
                )
    return found


def check_file(root: Path, path: Path, policy: Policy) -> list[Violation]:
    """Every violation in one file."""
    rel = path.relative_to(root).as_posix()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    except SyntaxError as exc:
        return [Violation(rel, exc.lineno or 0, f"cannot parse: {exc.msg}")]
    module, is_package = _module_name(root, path)
    imports = list(_imports(root, tree, module, is_package))
    found = [v for line, target, _ in imports for v in _layering(policy.layer, line, target, rel)]
    if policy.pure:
        found += _purity(policy, tree, imports, rel)
    return found


def files_to_check(root: Path) -> list[tuple[Path, Policy]]:
    """The files under the rules, each with its policy."""
    chosen: list[tuple[Path, Policy]] = []
    chosen += [(p, Policy("core", True)) for p in sorted((root / "core").rglob("*.py"))]
    for path in sorted((root / "cluster").rglob("*.py")):
        rel = path.relative_to(root / "cluster").parts
        pure = rel == ("__init__.py",) or rel[0] in SANS_IO_DIRS
        chosen.append((path, Policy("cluster" if pure else "cluster-io", pure)))
    for path in sorted((root / "sim").rglob("*.py")):
        io = path.parent == root / "sim" and path.name in SIM_IO
        chosen.append((path, Policy("sim", not io)))  # IO files still obey the layering
    return chosen


def check_tree(root: Path) -> list[Violation]:
    """Check a directory laid out like the repository (``core/``, ``cluster/``, ``sim/``)."""
    found: list[Violation] = []
    for path, policy in files_to_check(root):
        found += check_file(root, path, policy)
    return sorted(set(found))


def _report(violations: list[Violation]) -> str:
    return "\n".join(["", *map(str, violations)])


# --- the repository -------------------------------------------------------------------


def test_checker_sees_the_repository():
    files = [p.relative_to(REPO).as_posix() for p, _ in files_to_check(REPO)]
    assert any(f.startswith("core/") for f in files), "no core/ files found: is REPO right?"


def test_repository_is_pure_and_layered():
    violations = check_tree(REPO)
    assert not violations, "sans-IO or layering rule broken:" + _report(violations)


# --- the checker, on planted code -------------------------------------------------------


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name in ("core", "cluster", "sim"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").touch()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _messages(violations: list[Violation]) -> list[str]:
    return [str(v) for v in violations]


def test_clean_tree_passes(tmp_path):
    root = _plant(
        tmp_path,
        {
            "core/rules.py": "from __future__ import annotations\nimport re\nimport mmh3\n",
            "core/table.py": "from .rules import x\nfrom . import rules\nfrom sortedcontainers import SortedList\n",
            "cluster/node/node.py": (
                "from random import Random\nimport random\n"
                "from meshlimit.core.rules import Rule\nfrom . import codec\n"
                "def f(rng: random.Random) -> Random:\n    return Random(7)\n"
            ),
            "cluster/wire/codec.py": "import msgpack\nimport struct\n",
            "cluster/runtime.py": "import asyncio\nimport socket\nimport time\n",
            "sim/world.py": "from random import Random\nfrom meshlimit.cluster.node import Node\nfrom .net import Net\n",
            "sim/net.py": "from ..core import rules\n",
            "sim/report.py": "import os\nimport json\n",
            "sim/cli.py": "import argparse\nimport time\n",
        },
    )
    assert check_tree(root) == []


def test_forbidden_imports_in_core_are_named_with_file_and_line(tmp_path):
    root = _plant(
        tmp_path,
        {
            "core/bad.py": (
                "import re\nimport time\nfrom datetime import datetime\nimport os.path\n"
                "from random import Random\nimport socket as s\n"
            ),
        },
    )
    messages = _messages(check_tree(root))
    for line, name in [(2, "time"), (3, "datetime"), (4, "os"), (5, "random"), (6, "socket")]:
        assert any(m.startswith(f"core/bad.py:{line}:") and name in m for m in messages), messages
    assert len(messages) == 5, messages


def test_random_module_functions_are_refused_in_cluster_and_sim(tmp_path):
    root = _plant(
        tmp_path,
        {
            "cluster/node/node.py": "import random\nx = random.random()\ny = random.randint(1, 2)\n",
            "sim/faults.py": "import random as r\nr.shuffle([])\nfrom random import choice\n",
            "sim/world.py": "from random import Random as R\nimport random\na = R()\nb = random.Random()\n",
        },
    )
    messages = _messages(check_tree(root))
    expected = [
        "cluster/node/node.py:2: random.random",
        "cluster/node/node.py:3: random.randint",
        "sim/faults.py:2: r.shuffle",
        "sim/faults.py:3: from random import choice",
        "sim/world.py:3: Random() without a seed",
        "sim/world.py:4: Random() without a seed",
    ]
    for prefix in expected:
        assert any(m.startswith(prefix) for m in messages), (prefix, messages)
    assert len(messages) == len(expected), messages


def test_io_calls_and_dynamic_imports_are_refused(tmp_path):
    root = _plant(
        tmp_path,
        {
            "core/load.py": "data = open('x').read()\nm = __import__('time')\nimport importlib\n",
            "sim/workload.py": "import asyncio\nimport threading\nfrom subprocess import run\nimport uvloop\n",
        },
    )
    messages = _messages(check_tree(root))
    for prefix in [
        "core/load.py:1: open()",
        "core/load.py:2: __import__()",
        "core/load.py:3: import importlib",
        "sim/workload.py:1: import asyncio",
        "sim/workload.py:2: import threading",
        "sim/workload.py:3: from subprocess import run",
        "sim/workload.py:4: import uvloop",
    ]:
        assert any(m.startswith(prefix) for m in messages), (prefix, messages)


def test_layering_is_enforced(tmp_path):
    root = _plant(
        tmp_path,
        {
            "core/a.py": (
                "from meshlimit.cluster import node\nfrom .. import Limiter\nimport meshlimit.sim\n"
                "import aiohttp\nimport msgpack\n"
            ),
            "cluster/node/node.py": "from meshlimit.cluster.runtime import Runtime\nfrom meshlimit.sim import world\n",
            "cluster/runtime.py": "import asyncio\nimport aiohttp\nfrom meshlimit.cluster.node import Node\n",
            "cluster/daemon/ctl.py": "from meshlimit.node import parse_address\nimport meshlimit\n",
            "sim/world.py": "from meshlimit.cluster import runtime\nfrom meshlimit.cluster.daemon.main import main\n",
            "sim/cli.py": "from meshlimit.cluster.runtime import Runtime\nimport meshlimit\n",
        },
    )
    messages = _messages(check_tree(root))
    for prefix in [
        "core/a.py:1: layering: core may not import meshlimit.cluster",
        "core/a.py:2: layering: core may not import meshlimit",
        "core/a.py:3: layering: core may not import meshlimit.sim",
        "core/a.py:4: core may not depend on 'aiohttp'",
        "core/a.py:5: core may not depend on 'msgpack'",
        "cluster/node/node.py:1: layering: cluster may not import meshlimit.cluster.runtime",
        "cluster/node/node.py:2: layering: cluster may not import meshlimit.sim",
        "sim/world.py:1: layering: sim may not import meshlimit.cluster.runtime",
        "sim/world.py:2: layering: sim may not import meshlimit.cluster.daemon.main",
        "sim/cli.py:1: layering: sim may not import meshlimit.cluster.runtime",
        "sim/cli.py:2: layering: sim may not import meshlimit",
        "cluster/daemon/ctl.py:1: layering: cluster-io may not import meshlimit.node",
        "cluster/daemon/ctl.py:2: layering: cluster-io may not import meshlimit",
    ]:
        assert any(m.startswith(prefix) for m in messages), (prefix, messages)
    assert not any(m.startswith("cluster/runtime.py") for m in messages), messages


def test_unparsable_file_is_reported(tmp_path):
    root = _plant(tmp_path, {"core/broken.py": "def f(:\n"})
    messages = _messages(check_tree(root))
    assert len(messages) == 1 and messages[0].startswith("core/broken.py:1: cannot parse"), messages
