"""The native build's guard (``meshlimit/_native.py``): compiled modules run only for the
sources they were compiled from, and ``MESHLIMIT_PURE=1`` turns them off.

The build itself (``setup.py``) is exercised by every editable install, and its
fallback without a C compiler by ``tests/test_packaging.py``'s wheel test. Here: the
decision on a manifest, and end to end in fresh interpreters over a copy of the
installed layout (``meshlimit/`` with ``meshlimit/core/`` inside, extensions and
manifest included when this tree has a build), where a source is edited as a
developer or a planted bug would edit it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshlimit import _native

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "meshlimit" / _native.MANIFEST
BUILT = MANIFEST.is_file()
#: The build compiled the C hot path (``core/_hotpath.c``) too.
HOT_BUILT = BUILT and "hotpath" in json.loads(MANIFEST.read_text(encoding="utf-8"))

_PROBE = """
import json, sys
import meshlimit, meshlimit._native as native
from meshlimit import Limiter
decision = Limiter("5/second", clock=lambda: 1_700_000_000 * 10**9).check("acme")
import meshlimit.core.engine as engine
print(json.dumps({
    "state": native.state(), "compiled": native.compiled_modules(),
    "hotpath": native.hotpath_state(), "hot_loaded": native.hotpath_loaded(),
    "package": meshlimit.__file__, "engine": engine.__file__, "limit": decision.limit,
}))
"""


def probe(path: Path | None = None, **env: str) -> dict[str, object]:
    """Run :data:`_PROBE` in a fresh interpreter; ``path`` first on ``sys.path``."""
    environ = {k: v for k, v in os.environ.items() if k != _native.PURE_ENV} | env
    if path is not None:
        environ["PYTHONPATH"] = str(path)
    cwd = path if path is not None else REPO
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=cwd, env=environ, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def installed_copy(root: Path) -> Path:
    """This tree's package as a wheel lays it out, build products included."""
    package = root / "meshlimit"
    shutil.copytree(REPO / "meshlimit", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "core", package / "core", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_build_is_used_when_present_and_the_sources_unedited():
    seen = probe()
    if not BUILT:
        assert seen["state"] == "pure: not compiled (no native build)"
        assert seen["compiled"] == []
        pytest.skip("no native build in this tree (no C compiler, or MESHLIMIT_PURE at build)")
    assert seen["state"] == "native", seen["state"]
    assert seen["compiled"] == list(_native.COMPILED)
    assert seen["limit"] == 5
    assert seen["hot_loaded"] is HOT_BUILT
    assert seen["hotpath"] == (
        "native" if HOT_BUILT else "off: not built (no C hot path in this build)"
    )


def test_meshlimit_no_hotpath_keeps_the_compiled_modules_without_the_c():
    seen = probe(**{_native.NO_HOTPATH_ENV: "1"})
    assert seen["hotpath"] == (
        f"off: {_native.NO_HOTPATH_ENV} is set"
        if BUILT
        else "off: the compiled modules are not in use (pure: not compiled (no native build))"
    )
    assert seen["hot_loaded"] is False
    assert seen["compiled"] == (list(_native.COMPILED) if BUILT else [])
    assert seen["limit"] == 5


def test_meshlimit_pure_loads_every_module_from_its_source():
    seen = probe(**{_native.PURE_ENV: "1"})
    assert seen["state"] == "pure: MESHLIMIT_PURE is set"
    assert seen["compiled"] == []
    assert seen["hot_loaded"] is False
    assert (
        seen["hotpath"] == "off: the compiled modules are not in use (pure: MESHLIMIT_PURE is set)"
    )
    assert str(seen["engine"]).endswith("engine.py")
    assert seen["limit"] == 5
    # "0" and "" leave the choice to the build.
    assert probe(**{_native.PURE_ENV: "0"})["state"] == probe()["state"]


def test_an_edited_source_takes_effect_without_a_rebuild(tmp_path):
    root = installed_copy(tmp_path)
    seen = probe(root)
    assert Path(str(seen["package"])).is_relative_to(root), "the copy was not the one imported"
    assert seen["state"] == ("native" if BUILT else "pure: not compiled (no native build)")

    # A planted bug in a compiled module: it must run as written.
    fastpath = root / "meshlimit" / "core" / "fastpath.py"
    original = fastpath.read_text(encoding="utf-8")
    assert original.count("    limit = rule.limit\n") == 2
    fastpath.write_text(
        original.replace("    limit = rule.limit\n", "    limit = rule.limit + 1000\n")
    )
    seen = probe(root)
    assert seen["limit"] == 1005
    assert seen["compiled"] == [] and seen["hot_loaded"] is False
    assert str(seen["engine"]).endswith("engine.py")
    if BUILT:
        assert (
            seen["state"] == "pure: fastpath.py (meshlimit.core.fastpath) changed since the build"
        )

    # An edit to a module the compiled ones import (their constants may be compiled in):
    # the whole group falls back too.
    fastpath.write_text(original)
    algorithms = root / "meshlimit" / "core" / "algorithms.py"
    algorithms.write_text(algorithms.read_text(encoding="utf-8") + "\n# edited\n")
    seen = probe(root)
    assert seen["compiled"] == [] and seen["limit"] == 5 and seen["hot_loaded"] is False
    if BUILT:
        assert (
            seen["state"]
            == "pure: algorithms.py (meshlimit.core.algorithms) changed since the build"
        )


@pytest.mark.skipif(not HOT_BUILT, reason="no C hot path in this build")
def test_an_edited_c_source_turns_the_c_path_off_and_keeps_the_compiled_modules(tmp_path):
    root = installed_copy(tmp_path)
    source = root / "meshlimit" / "core" / "_hotpath.c"
    source.write_text(source.read_text(encoding="utf-8") + "\n/* edited */\n")
    seen = probe(root)
    assert seen["hotpath"] == "off: _hotpath.c changed since the build"
    assert seen["hot_loaded"] is False
    assert seen["compiled"] == list(_native.COMPILED) and seen["limit"] == 5
    source.unlink()  # an installed wheel ships no C source: the build is trusted
    seen = probe(root)
    assert seen["hotpath"] == "native" and seen["hot_loaded"] is True


def test_the_decision_on_the_c_hot_path(tmp_path):
    manifest = tmp_path / _native.MANIFEST
    assert _native.decide_hotpath(manifest, "pure: x", {}) == (
        "off: the compiled modules are not in use (pure: x)"
    )
    assert _native.decide_hotpath(manifest, "native", {}).startswith("off: unreadable")
    manifest.write_text(json.dumps({"compiled": [], "sources": {}}))
    assert _native.decide_hotpath(manifest, "native", {}) == (
        "off: not built (no C hot path in this build)"
    )
    source = _native.module_source(_native.HOTPATH, ".c")
    assert source is not None and source.name == "_hotpath.c"
    manifest.write_text(json.dumps({"hotpath": _native.source_sha256(source)}))
    assert _native.decide_hotpath(manifest, "native", {}) == "native"
    off = {_native.NO_HOTPATH_ENV: "1"}
    assert _native.decide_hotpath(manifest, "native", off) == "off: MESHLIMIT_NO_HOTPATH is set"
    manifest.write_text(json.dumps({"hotpath": "0" * 64}))
    assert _native.decide_hotpath(manifest, "native", {}) == (
        "off: _hotpath.c changed since the build"
    )


def test_the_decision_on_a_manifest(tmp_path):
    manifest = tmp_path / _native.MANIFEST
    assert _native.decide(manifest, {}) == "pure: not compiled (no native build)"
    manifest.write_text("{not json")
    assert _native.decide(manifest, {}).startswith("pure: unreadable build manifest")
    sources = {
        name: _native.source_sha256(path)
        for name in (*_native.COMPILED, "meshlimit.core.rules")
        if (path := _native.module_source(name)) is not None
    }
    assert len(sources) == len(_native.COMPILED) + 1
    built = {"compiled": list(_native.COMPILED), "sources": sources}
    manifest.write_text(json.dumps(built))
    assert _native.decide(manifest, {}) == "native"
    assert _native.decide(manifest, {_native.PURE_ENV: "1"}) == "pure: MESHLIMIT_PURE is set"
    manifest.write_text(json.dumps(built | {"compiled": list(_native.COMPILED[:2])}))
    assert "other modules" in _native.decide(manifest, {})
    manifest.write_text(json.dumps(built | {"sources": {}}))  # no hash: nothing vouched for
    assert "lacks the hash" in _native.decide(manifest, {})
    manifest.write_text(json.dumps(built | {"sources": sources | {"meshlimit.core.rules": "0"}}))
    assert (
        _native.decide(manifest, {})
        == "pure: rules.py (meshlimit.core.rules) changed since the build"
    )
