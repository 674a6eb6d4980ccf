"""Packaging: the layer folders install as ``meshlimit.*``, the wheel ships them, the CLI runs."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("meshlimit.core", "meshlimit.cluster", "meshlimit.sim")


def test_layers_import_under_meshlimit():
    for name in ("meshlimit", *LAYERS):
        importlib.import_module(name)
    import meshlimit

    for name in ("Limiter", "Rule", "Decision"):
        assert name in meshlimit.__all__, f"meshlimit.__all__ lacks {name}"
        assert hasattr(meshlimit, name)


def test_layers_come_from_their_folders():
    for name, folder in zip(LAYERS, ("core", "cluster", "sim"), strict=True):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == REPO / folder


def test_py_typed_ships():
    assert resources.files("meshlimit").joinpath("py.typed").is_file()


def test_cli_help_and_version(capsys):
    from meshlimit.cli import main

    for flag in ("--help", "--version"):
        with pytest.raises(SystemExit) as exit_info:
            main([flag])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out
    assert "meshlimit 0." in out
    assert main([]) == 2, "no command: print usage and fail"


def test_local_demo_runs_and_is_deterministic(capsys):
    from meshlimit.cli import main

    assert main(["demo", "--local"]) == 0
    first = capsys.readouterr().out
    assert main(["demo", "--local"]) == 0
    second = capsys.readouterr().out
    assert first == second, "the demo runs on virtual time: two runs must print the same"
    for heading in ("Phase 1:", "Phase 2:", "Phase 3:", "Phase 4:"):
        assert heading in first


def test_python_dash_m_runs():
    result = subprocess.run(
        [sys.executable, "-m", "meshlimit", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


# --- the built wheel, installed into a fresh virtualenv ----------------------------------

_SMOKE = """
import meshlimit.core, meshlimit.cluster, meshlimit.sim
from meshlimit import Decision, Limiter, Rule
assert Rule.parse("10/s burst 5").burst == 5
limiter = Limiter(default="2/second", clock=lambda: 1_700_006_400 * 10**9)
decisions = [limiter.check("acme") for _ in range(3)]
assert [d.allowed for d in decisions] == [True, True, False], decisions
assert isinstance(decisions[0], Decision)
print("smoke ok")
"""


def _run(
    args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    # Build from a copy, so setuptools' build/ and egg-info never touch the work tree and a
    # stale build/lib cannot smuggle deleted modules into the wheel (nor an editable
    # install's native build products: setup.py).
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            *(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"),
            *(".hypothesis", "*.so", "_native_build.json"),
        ),
    )
    dist = tmp_path / "dist"
    # Built as on a machine without a C compiler (and fast: mypyc never runs): the native
    # step is skipped with a note, and the wheel is the pure-Python package, which works.
    built = _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist)],
        source,
        300,
        env=os.environ | {"CC": "false"},
    )
    assert "meshlimit native build: skipped (no working C compiler" in built.stdout + built.stderr
    (wheel,) = dist.glob("meshlimit-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd", "_native_build.json"))], names
    for folder in ("meshlimit/core/", "meshlimit/cluster/", "meshlimit/sim/"):
        assert any(n.startswith(folder) for n in names), f"wheel lacks {folder}"
    assert "meshlimit/py.typed" in names
    for bare in ("core/", "cluster/", "sim/", "tests/"):
        assert not any(n.startswith(bare) for n in names), f"wheel has a top-level {bare}"
    for scenario in (REPO / "sim" / "scenarios").glob("*.toml"):
        assert f"meshlimit/sim/scenarios/{scenario.name}" in names, f"wheel lacks {scenario.name}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    bin_dir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    python = bin_dir / "python"
    _run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        tmp_path,
        300,
    )
    # Run from tmp_path, so the repository's folders cannot shadow the installed package.
    assert "smoke ok" in _run([str(python), "-c", _SMOKE], tmp_path, 60).stdout
    pure = "import meshlimit._native as n; print(n.state())"
    assert "pure: not compiled" in _run([str(python), "-c", pure], tmp_path, 60).stdout
    assert "demo" in _run([str(bin_dir / "meshlimit"), "--help"], tmp_path, 60).stdout


@pytest.mark.slow
@pytest.mark.process
def test_cluster_demo_runs_three_processes_and_reports_each_phase():
    result = subprocess.run(
        [sys.executable, "-m", "meshlimit", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for heading in ("Phase 1: healthy cluster", "crashed", "back", "killed", "restarted"):
        assert heading in out
    # In the healthy phase every client's best window is exactly its limit.
    healthy = out.split("Phase 1:")[1].split(">>> killed")[0]
    rows = [
        line.split()
        for line in healthy.splitlines()
        if line.strip()[:4] in ("acme", "glob", "init")
    ]
    assert len(rows) == 3
    for row in rows:
        limit, peak = int(row[1]), int(row[5])
        assert peak == limit, row
