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

#: ``"native"`` or ``"pure: <why>"`` once decided (:func:`state`).
STATE = "not decided"


def source_sha256(path: Path) -> str:
    """The hash the build records and the guard compares."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pure_forced(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """True when ``MESHLIMIT_PURE`` asks for the pure-Python modules."""
    return environ.get(PURE_ENV, "") not in ("", "0")


def module_source(name: str) -> Path | None:
    """The ``.py`` file of a meshlimit module, found as the import system would (through
    the editable install's folder mapping too), without importing it."""
    package, _, leaf = name.rpartition(".")
    if package == __package__:
        folders: Sequence[str] = sys.modules[__package__].__path__
    else:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            return None
        folders = list(spec.submodule_search_locations)
    for folder in folders:
        path = Path(folder) / f"{leaf}.py"
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


class PureSourceFinder:
    """First on ``sys.meta_path``: at the first import of a module of :data:`COMPILED`,
    decides (:func:`state`); when pure, loads those modules from their ``.py`` files, never
    the extension (the ``importlib.abc`` base class would add nothing but import time)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
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
