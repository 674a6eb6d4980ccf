"""``scripts/bench_cluster.py`` end to end: a smoke run (``--quick``, one preset) of three
daemons under redis-benchmark gives every phase's figures and leaves no process behind.

Long lane only (``./scripts/test --slow``): the run takes about 40 s. It asserts nothing
about speed, only that the benchmark runs, measures and cleans up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.long, pytest.mark.slow, pytest.mark.process, pytest.mark.loopback]

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_cluster.py"
PHASES = ("moderate", "saturation", "half", "overload", "recovery")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone too: it runs nothing and holds no port
    with open(f"/proc/{pid}/status") as status:
        return any(line.startswith("State:") and "Z" in line for line in status)


def _load_generators(ports: set[int]) -> list[str]:
    """Command lines of running redis-benchmark processes aimed at one of ``ports``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"redis-benchmark"):
            text = [a.decode(errors="replace") for a in args]
            pairs = zip(text, text[1:], strict=False)
            if any(a == "-p" and b.isdigit() and int(b) in ports for a, b in pairs):
                found.append(" ".join(text))
    return found


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="needs redis-benchmark")
def test_quick_run_reports_every_phase_and_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(_SCRIPT), "--quick", "--presets", "local", "--json", str(out)]
    argv += ["--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "goal (issue 14)" in proc.stdout

    result = json.loads(out.read_text())
    phases = result["presets"]["local"]
    assert tuple(phases) == PHASES
    for name in PHASES[:-1]:
        assert phases[name]["rate"] > 0, name
        assert phases[name]["counts"]["decisions"] > 0, name
    for name in ("moderate", "half"):
        assert phases[name]["complete"], name
        assert 0 < phases[name]["p50_ms"] <= phases[name]["p99_ms"], name
    # about two thirds of the moderate load is forwarded (random keys, three owners)
    assert 0.4 < phases["moderate"]["counts"]["shares"]["forwarded"] < 0.9
    assert phases["recovery"]["probes"], "recovery was never probed"
    if shutil.which("redis-server"):
        assert result["redis_server"]["saturation"]["rate"] > 0
        assert result["ratios"]["local"]["saturation"] > 0
    for name, node in result["nodes"].items():
        assert _gone(node["pid"]), f"daemon {name} left running"
    assert not _load_generators({node["resp_port"] for node in result["nodes"].values()})
    assert len(list((tmp_path / "logs").glob("*.log"))) == 3
