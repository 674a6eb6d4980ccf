"""The machine and the software a benchmark ran on, for the header it prints first.

A figure means little without the CPU, the core count, the load, and the versions of the
libraries and tools on both sides of a comparison; every benchmark names them.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (None where it names none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_caches() -> str:
    """The first CPU's data and unified caches, such as ``L1 32K, L2 1024K, L3 36608K``."""
    caches = []
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with (
                open(f"{index}/level") as f,
                open(f"{index}/size") as g,
                open(f"{index}/type") as h,
            ):
                kind = h.read().strip()
                if kind != "Instruction":
                    caches.append(f"L{f.read().strip()} {g.read().strip()}")
        except OSError:
            pass
    return ", ".join(caches)


def package_version(dist: str) -> str:
    """The installed version of a Python distribution, or ``absent``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def tool_version(argv: list[str], pattern: str) -> str:
    """The version a command-line tool prints (``pattern``'s first group), ``absent`` when the
    tool is not installed and ``?`` when its output does not match."""
    if not shutil.which(argv[0]):
        return "absent"
    out = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(pattern, out.stdout + out.stderr)
    return m[1] if m else "?"


def loadavg_text() -> str:
    """The 1, 5 and 15 minute load averages, as ``0.52 0.61 0.70``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
