"""The source-hash guard of the native build: compiled modules only for unedited sources.

``setup.py`` may compile the in-process hot path (:data:`COMPILED`) with mypyc. The
build then writes :data:`MANIFEST` next to this file: the sha256 of every source the
compiler read for those modules (the modules and everything of meshlimit's they
import, since compiled code inlines their ``Final`` constants and calls the other
compiled modules directly). :func:`install`, run by the package's ``__init__``
before any submodule loads, puts a finder first on ``sys.meta_path`` that decides,
once per process, at the first import of one of those modules:

- *native*: no ``MESHLIMIT_PURE``, a manifest, and every listed source byte-identical
  to the one compiled. Python's own import then finds the extension modules (they
  come before ``.py`` files in a folder).
- *pure* otherwise (``MESHLIMIT_PURE=1``, no build, or any source edited since the
  build: a developer's change or a planted bug): a finder placed first on
  ``sys.meta_path`` loads every module of :data:`COMPILED` from its ``.py`` file, so
  an edit takes effect without a rebuild. All or none: a compiled module calls the
  others of the group directly, so one edited source turns the whole group off.

:func:`state` says which, and why (``meshlimit._native.state()``).

The build may also compile :data:`HOTPATH`, the hand-written C of the window check's
common case (``core/_hotpath.c``), which ``fastpath`` calls when it can import it. The
finder lets that import succeed only alongside the compiled modules, and only when the
build recorded it, its C source (where present, as in a source tree) is unedited, and
:data:`NO_HOTPATH_ENV` is unset: :func:`hotpath_state`. Otherwise the import fails and
``fastpath`` runs without it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: The modules the native build compiles: the in-process check and nothing else.
COMPILED = (
    "meshlimit.core.table",
    "meshlimit.core.series",
    "meshlimit.core.fastpath",
    "meshlimit.core.engine",
)
#: mypyc's shared library of the group, ``meshlimit.core.native__mypyc``.
GROUP = "meshlimit.core.native"
#: Written by the build beside this file: ``{"compiled": [...], "sources": {module: sha256}}``.
MANIFEST = "_native_build.json"
#: Set (to anything but ``""`` or ``0``) to load the pure-Python modules everywhere.
PURE_ENV = "MESHLIMIT_PURE"
#: The C hot path: an extension of its own, built from ``core/_hotpath.c``.
HOTPATH = "meshlimit.core._hotpath"
#: Set (as :data:`PURE_ENV`) to run the compiled modules without the C hot path.
NO_HOTPATH_ENV = "MESHLIMIT_NO_HOTPATH"

#: ``"native"`` or ``"pure: <why>"`` once decided (:func:`state`).
STATE = "not decided"
#: ``"native"`` or ``"off: <why>"`` once decided (:func:`hotpath_state`).
HOTPATH_STATE = "not decided"


def source_sha256(path: Path) -> str:
    """The hash the build records and the guard compares."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pure_forced(
    environ: dict[str, str] | os._Environ[str] = os.environ, variable: str = PURE_ENV
) -> bool:
    """True when ``MESHLIMIT_PURE`` (or another switch ``variable``) is set."""
    return environ.get(variable, "") not in ("", "0")


def module_source(name: str, suffix: str = ".py") -> Path | None:
    """The ``.py`` file (or the ``suffix`` one) of a meshlimit module, found as the import
    system would (through the editable install's folder mapping too), without importing it."""
    package, _, leaf = name.rpartition(".")
    if package == __package__:
        folders: Sequence[str] = sys.modules[__package__].__path__
    else:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            return None
        folders = list(spec.submodule_search_locations)
    for folder in folders:
        path = Path(folder) / f"{leaf}{suffix}"
        if path.is_file():
            return path
    return None


def decide(manifest: Path, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """``"native"`` or ``"pure: <why>"`` for a build's manifest (see the module)."""
    if pure_forced(environ):
        return f"pure: {PURE_ENV} is set"
    try:
        built = json.loads(manifest.read_text(encoding="utf-8"))
        compiled, sources = built["compiled"], built["sources"]
    except FileNotFoundError:
        return "pure: not compiled (no native build)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"pure: unreadable build manifest ({error})"
    if sorted(compiled) != sorted(COMPILED):
        return "pure: the build compiled other modules than this version names"
    if not set(COMPILED) <= set(sources):
        return "pure: the build manifest lacks the hash of a compiled module"
    for name, digest in sources.items():
        path = module_source(name)
        if path is None:
            return f"pure: {name} has no source file"
        if source_sha256(path) != digest:
            return f"pure: {path.name} ({name}) changed since the build"
    return "native"


def decide_hotpath(
    manifest: Path, state_of_group: str, environ: dict[str, str] | os._Environ[str] = os.environ
) -> str:
    """``"native"`` or ``"off: <why>"``: may :data:`HOTPATH` be imported (see the module)."""
    if state_of_group != "native":
        return f"off: the compiled modules are not in use ({state_of_group})"
    if pure_forced(environ, NO_HOTPATH_ENV):
        return f"off: {NO_HOTPATH_ENV} is set"
    try:
        digest = json.loads(manifest.read_text(encoding="utf-8")).get("hotpath")
    except (OSError, ValueError, AttributeError) as error:
        return f"off: unreadable build manifest ({error})"
    if not isinstance(digest, str):
        return "off: not built (no C hot path in this build)"
    source = module_source(HOTPATH, ".c")  # a source tree's; an installed wheel has none
    if source is not None and source_sha256(source) != digest:
        return f"off: {source.name} changed since the build"
    return "native"


class PureSourceFinder:
    """First on ``sys.meta_path``: at the first import of a module of :data:`COMPILED`,
    decides (:func:`state`); when pure, loads those modules from their ``.py`` files, never
    the extension (the ``importlib.abc`` base class would add nothing but import time).
    Refuses :data:`HOTPATH` unless :func:`hotpath_state` allows it."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == HOTPATH and hotpath_state() != "native":
            raise ModuleNotFoundError(f"{HOTPATH} not used: {hotpath_state()}", name=fullname)
        if fullname not in COMPILED or path is None or state() == "native":
            return None  # Python's own finders: the extension comes before the .py
        leaf = fullname.rpartition(".")[2]
        for folder in path:
            source = Path(folder) / f"{leaf}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def state() -> str:
    """:data:`STATE`, decided on first use (hashing the sources costs a few ms, paid only
    by processes that load the in-process check)."""
    global STATE
    if STATE == "not decided":
        STATE = decide(Path(__file__).with_name(MANIFEST))
    return STATE


def hotpath_state() -> str:
    """:data:`HOTPATH_STATE`, decided on first use."""
    global HOTPATH_STATE
    if HOTPATH_STATE == "not decided":
        HOTPATH_STATE = decide_hotpath(Path(__file__).with_name(MANIFEST), state())
    return HOTPATH_STATE


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); run before any core module loads."""
    if not any(isinstance(finder, PureSourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, PureSourceFinder())


def compiled_modules() -> list[str]:
    """Which modules of :data:`COMPILED` are loaded from an extension (for tests and
    benchmarks: what actually ran, not what was decided)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in COMPILED
        if (module := sys.modules.get(name)) is not None
        and str(getattr(module, "__file__", "")).endswith(suffixes)
    ]


def hotpath_loaded() -> bool:
    """Whether the C hot path is loaded (what ran, as :func:`compiled_modules`)."""
    return sys.modules.get(HOTPATH) is not None
