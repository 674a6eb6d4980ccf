#!/usr/bin/env python3
"""Degraded-decision latency around an owner crash, with real runtimes on loopback.

    .venv/bin/python scripts/degraded_latency.py [--seconds S] [--rate R]

Method. Three runtimes (``cluster/runtime.py``) in this process on 127.0.0.1 with the
``lan`` preset (probe every 1 s, forward timeout 200 ms): ``a`` is the seed of ``b``
and ``c``. After 3 s of settling, ``b`` issues ``--rate`` checks/s (default 500) for
200 clients ``a`` owns, each awaited concurrently, for ``--seconds`` (default 8). Two
seconds in, ``a`` is stopped without leaving (a crash). Each degraded answer's latency
(issue to answer, ``perf_counter``) is filed by whether ``b`` already held ``a`` as not
alive when the check was issued ("after detection") or not. One run; it prints the
detection time, p50/p99/max of each group, and how many forwarded checks were decided
at detection (``stranded_forwards``) rather than at their timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.runtime import Runtime

SETTLE_S = 3.0
CRASH_AT_S = 2.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def state_of(runtime: Runtime, node: str) -> str | None:
    return {name: state for name, _, state, _ in runtime.node.members()}.get(node)


async def run(seconds: float, rate: float) -> None:
    runtimes = {
        name: Runtime(
            NodeConfig.preset("lan", name, ("127.0.0.1", free_port()), default_rule="1000000/hour"),
            seed=1,
        )
        for name in "abc"
    }
    a, b = runtimes["a"], runtimes["b"]
    try:
        await a.start([])
        for name in "bc":
            await runtimes[name].start([a.node.config.addr])
        await asyncio.sleep(SETTLE_S)
        clients = [f"k{i}" for i in range(10_000) if b.node.owner(f"k{i}") == "a"][:200]
        samples: list[tuple[float, float, str]] = []  # (issued at, latency ms, path)

        async def one(client: str) -> None:
            issued = time.perf_counter()
            decision = await b.check(client)
            samples.append((issued, (time.perf_counter() - issued) * 1e3, decision.path))

        tasks = []
        start = time.perf_counter()
        crashed_at = detected_at = None
        i = 0
        while time.perf_counter() - start < seconds:
            now = time.perf_counter()
            if crashed_at is None and now - start >= CRASH_AT_S:
                await a.stop(leave=False)
                crashed_at = now
            if crashed_at is not None and detected_at is None and state_of(b, "a") != "alive":
                detected_at = now
            tasks.append(asyncio.ensure_future(one(clients[i % len(clients)])))
            i += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    finally:
        for runtime in runtimes.values():
            await runtime.stop(leave=False)
    if crashed_at is None or detected_at is None:
        print("a was never suspected: run longer")
        return
    degraded = [(issued, ms) for issued, ms, path in samples if path == "degraded"]
    print(f"detection {detected_at - crashed_at:.2f} s after the crash")
    groups = {
        "issued before detection": [ms for issued, ms in degraded if issued < detected_at],
        "issued after detection": [ms for issued, ms in degraded if issued >= detected_at],
    }
    for label, values in groups.items():
        print(
            f"degraded, {label}: n={len(values)} p50={percentile(values, 0.5):.3f} ms "
            f"p99={percentile(values, 0.99):.3f} ms max={max(values, default=float('nan')):.3f} ms"
        )
    stats = b.node.stats
    print(
        f"stranded_forwards={stats['stranded_forwards']} forward_timeouts={stats['forward_timeouts']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.rate))


if __name__ == "__main__":
    main()
