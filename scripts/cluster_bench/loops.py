"""The load loops the cluster benchmark runs inside a worker process, around any ``check``.

Closed loop (:func:`closed_loop`, :func:`sequential`, :func:`sync_loop`): checks back to
back, the maximum rate. Open loop (:func:`open_loop`): checks started on a fixed schedule,
latency from each one's scheduled instant, so a late generator or a queue counts against
it (no coordinated omission). Every loop returns plain data: checks, elapsed and CPU
seconds, and latency percentiles where it timed each check.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from harness.stats import Stopwatch, latency_summary, nearest_rank


def latency_us(lat_ns: list[int]) -> dict[str, float]:
    """n, p50/p90/p99/p99.9/max in microseconds of latencies in nanoseconds."""
    return latency_summary(lat_ns, unit=1000, suffix="_us")


async def closed_loop(
    check: Callable[[str], Awaitable[Any]], clients: list[str], tasks: int, seconds: float
) -> dict[str, Any]:
    """``tasks`` coroutines checking back to back until the deadline."""
    pc = time.perf_counter_ns
    n = len(clients)
    counts = [0] * tasks
    end = pc() + int(seconds * 1e9)

    async def runner(j: int) -> None:
        i = (j * 7) % n
        done = 0
        while True:
            await check(clients[i])
            done += 1
            i += 1
            if i == n:
                i = 0
            if pc() >= end:
                break
            if not done & 63:
                await asyncio.sleep(0)
        counts[j] = done

    watch = Stopwatch()
    await asyncio.gather(*(runner(j) for j in range(tasks)))
    span = watch.stop()
    return {"checks": sum(counts), "elapsed_s": span.wall_s, "cpu_s": span.cpu_s}


async def sequential(
    check: Callable[[str], Awaitable[Any]], clients: list[str], seconds: float
) -> dict[str, Any]:
    """One coroutine, checks back to back, each one's latency recorded."""
    pc = time.perf_counter_ns
    n = len(clients)
    lat: list[int] = []
    append = lat.append
    i = 0
    cpu0, t0 = time.process_time(), pc()
    end = t0 + int(seconds * 1e9)
    t = t0
    while t < end:
        s = pc()
        await check(clients[i])
        t = pc()
        append(t - s)
        i += 1
        if i == n:
            i = 0
        if not i & 63:
            await asyncio.sleep(0)
    cpu1 = time.process_time()
    out = {"checks": len(lat), "elapsed_s": (t - t0) / 1e9, "cpu_s": cpu1 - cpu0}
    out.update(latency_us(lat))
    return out


async def sync_loop(
    check: Callable[[str], Any], clients: list[str], seconds: float
) -> dict[str, Any]:
    """A plain ``for`` loop (no await per check), in slices of 1,024 checks.

    Only the slices are timed; between slices the loop yields once, so that the node
    sharing this event loop still answers its peer's probes (a loop blocked for seconds
    would be suspected and declared dead by the other node).
    """
    pc = time.perf_counter_ns
    pt = time.process_time_ns
    done = elapsed = cpu = 0
    chunk = (clients * (1 + 1024 // len(clients)))[:1024]
    while elapsed < seconds * 1e9:
        t0, c0 = pc(), pt()
        for c in chunk:
            check(c)
        t1, c1 = pc(), pt()
        done += len(chunk)
        elapsed += t1 - t0
        cpu += c1 - c0
        await asyncio.sleep(0)
    return {"checks": done, "elapsed_s": elapsed / 1e9, "cpu_s": cpu / 1e9}


#: The open-loop generator thread sleeps at least this long between wake-ups.
GENERATOR_TICK_NS = 100_000


async def open_loop(
    check: Callable[[str], Awaitable[Any]], clients: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    """Checks started at fixed intervals; latency from each one's scheduled instant.

    The schedule is kept by a thread that sleeps (``time.sleep`` has microsecond
    resolution, asyncio timers under uvloop only milliseconds) and hands the checks that
    are due to the event loop with ``call_soon_threadsafe``, the way arrivals on a socket
    would wake it; the loop never spins waiting for the next instant.
    """
    pc = time.perf_counter_ns
    loop = asyncio.get_running_loop()
    n = len(clients)
    interval = 1e9 / rate
    total = max(1, int(rate * seconds))
    lat: list[int] = []
    svc: list[int] = []
    live: set[asyncio.Task[None]] = set()
    finished = asyncio.Event()

    async def one(client: str, scheduled: int) -> None:
        issued = pc()
        await check(client)
        t = pc()
        lat.append(t - scheduled)
        svc.append(t - issued)

    def issue(due: list[tuple[str, int]]) -> None:
        for client, scheduled in due:
            task = loop.create_task(one(client, scheduled))
            live.add(task)
            task.add_done_callback(live.discard)

    def generator() -> None:
        i = 0
        while i < total:
            due = min(total, int((pc() - start) / interval) + 1)
            if due > i:
                batch = [(clients[j % n], start + int(j * interval)) for j in range(i, due)]
                loop.call_soon_threadsafe(issue, batch)
                i = due
            wait_ns = start + int(i * interval) - pc()
            time.sleep(max(wait_ns, GENERATOR_TICK_NS) / 1e9)
        loop.call_soon_threadsafe(finished.set)

    cpu0 = time.process_time()
    start = pc() + 1_000_000
    thread = threading.Thread(target=generator, daemon=True)
    thread.start()
    await finished.wait()
    thread.join()
    last_scheduled = start + int((total - 1) * interval)
    await asyncio.sleep(0)
    if live:
        await asyncio.wait(list(live), timeout=5.0)
    end = pc()
    cpu1 = time.process_time()
    out = {
        "offered": rate,
        "scheduled": total,
        "answered": len(lat),
        # Achieved: answers per second of the schedule (answers after it still count).
        "achieved": len(lat) / max(1e-9, (last_scheduled - start) / 1e9 + 1 / rate),
        "cpu_s": cpu1 - cpu0,
        "wall_s": (end - start) / 1e9,
    }
    out.update(latency_us(lat))
    svc.sort()
    out["svc_p50_us"] = nearest_rank(svc, 0.5) / 1000
    out["svc_p99_us"] = nearest_rank(svc, 0.99) / 1000
    return out
