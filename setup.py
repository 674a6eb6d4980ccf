"""The build's one step beyond ``pyproject.toml``: the optional native in-process check.

``build_ext`` compiles the modules of ``meshlimit/_native.py``'s ``COMPILED`` (the
table, the series, the fused path and the engine: the in-process ``Limiter.check``)
with mypyc, from the same source, and the hand-written C of the window check's common
case (``core/_hotpath.c``, the guard's ``HOTPATH``; optional: if it alone fails to
compile, the mypyc modules still ship), and writes the guard's manifest (the sha256 of
every source the compiler read) beside ``meshlimit/_native.py``. The pure-Python
modules always ship too and are the fallback: the guard loads them when a source
no longer matches the manifest, when ``MESHLIMIT_PURE`` is set, and when there is
no build. Editable installs (``pip install -e .``, what ``scripts/test`` and
``scripts/demo`` run) build in place: the extensions land beside their sources
(``core/``), git-ignored.

The native step never fails an install. It is skipped, with a note on stderr, when
``MESHLIMIT_PURE`` is set at build time, when mypyc cannot be imported, or when no
working C compiler is found (``CC=false`` simulates that); a type or compile error
also leaves a pure install, with the error shown.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
#: Where the sources are laid out under their import names for mypyc, and its C output.
STAGE = Path("build") / "native" / "src"
C_DIR = Path("build") / "native" / "c"
CACHE = Path("build") / "native" / "mypy_cache"
#: The C hot path's source, and its staged copy: the file compiled and hashed.
HOTPATH_SOURCE = ROOT / "core" / "_hotpath.c"
HOTPATH_STAGED = STAGE / "meshlimit" / "core" / "_hotpath.c"


def load_guard() -> ModuleType:
    """``meshlimit/_native.py`` alone (importing the package would need its dependencies)."""
    spec = importlib.util.spec_from_file_location(
        "_meshlimit_native", ROOT / "meshlimit/_native.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GUARD = load_guard()


def note(message: str) -> None:
    sys.stderr.write(f"meshlimit native build: {message}\n")
    sys.stderr.flush()


def core_source(name: str) -> Path:
    """``meshlimit.core.x`` -> ``core/x.py`` (the package-dir mapping of pyproject.toml)."""
    assert name.startswith("meshlimit.core."), name
    return ROOT / "core" / (name.removeprefix("meshlimit.core.") + ".py")


def import_closure(names: tuple[str, ...]) -> list[str]:
    """The compiled modules and every ``meshlimit.core`` module they import, transitively:
    the sources mypyc reads and may take constants from."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(core_source(name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative to meshlimit.core (these modules are its children)
                    base = ".".join(name.split(".")[: -node.level])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                if candidate.startswith("meshlimit.core.") and core_source(candidate).is_file():
                    todo.append(candidate)
    return sorted(seen)


def skip_reason() -> str | None:
    """Why the native step cannot run here, or None."""
    if GUARD.pure_forced(os.environ):
        return f"{GUARD.PURE_ENV} is set"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed"
    return compiler_problem()


def compiler_problem() -> str | None:
    """Compile and link a trivial extension source with the configured compiler."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text("#include <Python.h>\nint meshlimit_probe(void) { return 0; }\n")
        compiler = new_compiler()
        customize_compiler(compiler)
        try:
            objects = compiler.compile(
                [str(source)], output_dir=tmp, include_dirs=[sysconfig.get_paths()["include"]]
            )
            compiler.link_shared_object(objects, str(Path(tmp) / "probe.so"))
        except Exception as error:  # CompileError, LinkError, a missing program
            return f"no working C compiler ({type(error).__name__}: {error})"
    return None


def stage_sources(names: list[str]) -> list[str]:
    """Copy the closure under its import names (``meshlimit/core/...``), so mypyc names the
    modules ``meshlimit.core.*``; returns the paths of the modules to compile."""
    shutil.rmtree(STAGE, ignore_errors=True)
    (STAGE / "meshlimit" / "core").mkdir(parents=True)
    (STAGE / "meshlimit" / "__init__.py").write_text("")
    shutil.copyfile(ROOT / "core" / "__init__.py", STAGE / "meshlimit" / "core" / "__init__.py")
    for name in names:
        shutil.copyfile(core_source(name), STAGE / "meshlimit" / "core" / core_source(name).name)
    return [str(STAGE / "meshlimit" / "core" / core_source(n).name) for n in GUARD.COMPILED]


#: Why the native step cannot run here (decided once, before setuptools tags the wheel:
#: a skipped build makes a pure wheel), or None.
SKIP = skip_reason()
#: Makes setuptools run build_ext and tag the wheel for this platform; replaced by
#: mypyc's extensions, or by none when mypyc fails.
PLACEHOLDER = Extension(f"{GUARD.GROUP}__mypyc", sources=[])
#: The sha256 of each source mypyc read, taken when it generated the C (setuptools may
#: finalize build_ext more than once; the C is generated, and these taken, once); and of
#: the C hot path's staged source, taken when it was staged.
SOURCES: dict[str, str] = {}
HOTPATH_SHA256: list[str] = []


class NativeBuildExt(build_ext):
    """``build_ext`` that compiles with mypyc when it can and installs pure when not."""

    def finalize_options(self) -> None:
        # mypyc's extensions replace the placeholder before setuptools prepares them; on
        # failure the placeholder stays in the distribution (the wheel's layout is decided)
        # and nothing is built.
        if self.distribution.ext_modules == [PLACEHOLDER]:  # once, though re-finalized
            self.distribution.ext_modules = self.native_extensions() or [PLACEHOLDER]
        super().finalize_options()
        if self.extensions == [PLACEHOLDER]:
            self.extensions = []

    def native_extensions(self) -> list[Extension]:
        """mypyc's extensions (C generated), or none, with a note saying why."""
        closure = import_closure(GUARD.COMPILED)
        try:
            from mypyc.build import mypycify

            extensions: list[Extension] = mypycify(
                # Not the project's mypy configuration (scripts/test type-checks strictly):
                # the build environment has none of the runtime dependencies (mmh3's types),
                # and only the compiled modules' own types matter here. A cache of its own
                # keeps the project's mypy cache warm.
                [*("--config-file", "", "--ignore-missing-imports"), *("--cache-dir", str(CACHE))]
                + stage_sources(closure),
                group_name=GUARD.GROUP,
                target_dir=str(C_DIR),
                opt_level="3",
            )
        except (Exception, SystemExit) as error:  # mypy reports type errors by exiting
            note(f"failed ({type(error).__name__}: {error}); the pure-Python modules are installed")
            return []
        # Optional: a compile error skips it (with a warning), not the mypyc modules.
        shutil.copyfile(HOTPATH_SOURCE, HOTPATH_STAGED)
        HOTPATH_SHA256.append(GUARD.source_sha256(HOTPATH_STAGED))
        extensions.append(Extension(GUARD.HOTPATH, [str(HOTPATH_STAGED)], optional=True))
        # The staged copies: the very bytes mypyc read.
        staged = STAGE / "meshlimit" / "core"
        SOURCES.update(
            {name: GUARD.source_sha256(staged / core_source(name).name) for name in closure}
        )
        return extensions

    def manifest(self) -> Path:
        """Beside ``meshlimit/_native.py``: in place, or in the build's lib folder."""
        return Path(self.get_ext_fullpath("meshlimit._native_build")).with_name(GUARD.MANIFEST)

    def run(self) -> None:
        self.manifest().unlink(missing_ok=True)  # a stale one must not bless new extensions
        if not self.extensions:
            return
        # An earlier in-place build's C hot path must not pass for this build's.
        Path(self.get_ext_fullpath(GUARD.HOTPATH)).unlink(missing_ok=True)
        try:
            super().run()
        except Exception as error:  # CompileError, LinkError, ...
            note(f"failed ({type(error).__name__}: {error}); the pure-Python modules are installed")
            return
        self.manifest().parent.mkdir(parents=True, exist_ok=True)
        assert set(GUARD.COMPILED) <= set(SOURCES), "the sources were hashed with the C made"
        built: dict[str, object] = {
            "compiled": list(GUARD.COMPILED),
            "sources": dict(sorted(SOURCES.items())),
        }
        what = ", ".join(GUARD.COMPILED)
        if Path(self.get_ext_fullpath(GUARD.HOTPATH)).is_file():  # optional: it may have failed
            built["hotpath"] = HOTPATH_SHA256[0]
            what += " and the C hot path"
        self.manifest().write_text(json.dumps(built, indent=1) + "\n", encoding="utf-8")
        note(f"compiled {what}")

    def get_outputs(self) -> list[str]:
        outputs: list[str] = super().get_outputs()
        return [*outputs, str(self.manifest())] if self.extensions else outputs


BUILDS = {"bdist_wheel", "editable_wheel", "build", "build_ext", "install", "develop"}
if SKIP is not None and BUILDS & set(sys.argv[1:]):  # not on metadata-only runs
    note(f"skipped ({SKIP}); the pure-Python modules are installed")
    # An earlier in-place build's manifest would keep blessing its extensions.
    (ROOT / "meshlimit" / GUARD.MANIFEST).unlink(missing_ok=True)
setup(
    ext_modules=[] if SKIP is not None else [PLACEHOLDER],
    cmdclass={"build_ext": NativeBuildExt},
)
