"""What Linux's ``/proc`` says about a process and about the whole machine.

The benchmarks run on a small machine shared with other work, so they account for CPU
rather than trust wall time alone: a process's CPU time and run-queue wait (runnable, but
waiting for a CPU that other work holds) from ``/proc/PID/task/*/schedstat``; how many
cores the whole machine kept busy, from ``/proc/stat``; resident memory from
``/proc/PID/status``. Linux only, as the benchmarks are.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


def schedstat(pid: int) -> tuple[int, int]:
    """Nanoseconds a process (all its threads) spent on a CPU, and runnable but waiting for one."""
    cpu = wait = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            on_cpu, run_delay, _ = task.read_text().split()
        except (OSError, ValueError):
            continue
        cpu, wait = cpu + int(on_cpu), wait + int(run_delay)
    return cpu, wait


class SchedWatch:
    """CPU time and run-queue wait of a few processes over a span, by role.

    Made at the start of the span; :meth:`stop` gives, per role, the CPU seconds the
    process used and the seconds it waited in the run queue meanwhile."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.before = {role: schedstat(pid) for role, pid in self.pids.items()}

    def stop(self) -> dict[str, tuple[float, float]]:
        """Role -> (CPU seconds, run-queue seconds) since the watch was made."""
        out = {}
        for role, pid in self.pids.items():
            cpu, wait = schedstat(pid)
            cpu0, wait0 = self.before[role]
            out[role] = ((cpu - cpu0) / 1e9, (wait - wait0) / 1e9)
        return out


def machine_busy_s() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine so far, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def wait_quiet(max_wait_s: float, busy_limit: float = 0.15) -> float:
    """Wait (at most ``max_wait_s``) for a second in which the machine's CPUs are at most
    ``busy_limit`` busy (cores) with other work; the last second's busy cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = machine_busy_s()[0], time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy_s()[0] - b0) / (time.monotonic() - t0)
        if busy <= busy_limit or time.monotonic() >= deadline:
            return busy


def children_cpu_s() -> float:
    """User and system CPU seconds of this process's children that have been waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def status_kib(pid: int | str = "self", names: tuple[str, ...] = ("VmRSS",)) -> dict[str, int]:
    """Fields of ``/proc/PID/status`` given in kB (``VmRSS``, ``VmHWM``, ...), by name.

    Empty when the process is gone, a zombie or dying (``State: Z`` or ``X``): a dying
    process's shrinking resident set is not its footprint. A field the kernel does not
    report for the process is absent."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name == "State" and value.split()[0] in ("Z", "X"):
                    return {}
                if name in names:
                    out[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out
