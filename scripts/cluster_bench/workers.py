"""The processes of the cluster benchmark: a meshlimit node (owner or load role) and the
peer, limits on RedisStorage. Each is spawned by :class:`harness.processes.Worker` and
serves commands over its pipe (that class states the protocol); the load node runs the
measurements of :mod:`cluster_bench.loops` in its own event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from harness.processes import HOST

from cluster_bench.constants import N_CLIENTS, RULE
from cluster_bench.loops import closed_loop, latency_us, open_loop, sequential, sync_loop


def uuid_like(i: int) -> str:
    """A deterministic 36-character id shaped like a UUID."""
    return f"{i:08x}-0000-4000-8000-{i * 2654435761 % 2**48:012x}"


def node_worker(
    conn: Connection, role: str, port: int, seed_port: int | None, options: dict[str, Any]
) -> None:
    """A process running one meshlimit Node; the load role also runs measurements."""
    from meshlimit.cluster.runtime import install_uvloop

    uvloop = install_uvloop()
    asyncio.run(_node_main(conn, role, port, seed_port, options, uvloop))


async def _node_main(
    conn: Connection,
    role: str,
    port: int,
    seed_port: int | None,
    options: dict[str, Any],
    uvloop: bool,
) -> None:
    import cProfile

    from meshlimit import Limiter, Node

    options = dict(options)
    mode = options.pop("mode", "strict")
    preset = options.pop("preset", "local")
    node = await Node.start(
        bind=f"{HOST}:{port}",
        seeds=[f"{HOST}:{seed_port}"] if seed_port else [],
        default=RULE,
        preset=preset,
        node_id=role,
        mode=mode,
        seed={"owner": 1, "load": 2}.get(role, 3),
        **options,
    )
    limiter = Limiter(default=RULE)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    clients: dict[str, list[str]] = {}
    profiler: cProfile.Profile | None = None

    async def limiter_check(client: str) -> Any:
        return limiter.check(client)

    def subject(kind: str) -> tuple[Callable[[str], Awaitable[Any]], list[str]]:
        if kind == "limiter":
            return limiter_check, clients["all"]
        names = {
            "forwarded": "remote",
            "forwarded-uuid": "remote_uuid",
            "owner": "own",
            "local": "all",
        }
        return node.check, clients[names[kind]]

    async def handle(cmd: str, arg: Any) -> Any:
        nonlocal profiler
        if cmd == "info":
            cfg = node.sans_io.config
            return {"uvloop": uvloop, "batch_window_ns": cfg.batch_window_ns, "mode": cfg.mode}
        if cmd == "wait_peer":
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                alive = [m for m in node.members() if m[2] == "alive"]
                if len(alive) >= 2:
                    break
                await asyncio.sleep(0.02)
            else:
                raise TimeoutError(f"{role}: peer never became alive: {node.members()}")
            own: list[str] = []
            remote: list[str] = []
            i = 0
            while len(own) < N_CLIENTS or len(remote) < N_CLIENTS:
                client = f"client-{i:06d}"
                (own if node.sans_io.owner(client) == role else remote).append(client)
                i += 1
            clients.update(own=own[:N_CLIENTS], remote=remote[:N_CLIENTS])
            clients["all"] = [f"client-{i:06d}" for i in range(N_CLIENTS)]
            # 36-byte ids (the length of a UUID) owned by the other node.
            clients["remote_uuid"] = []
            i = 0
            while len(clients["remote_uuid"]) < N_CLIENTS:
                client = uuid_like(i)
                if node.sans_io.owner(client) != role:
                    clients["remote_uuid"].append(client)
                i += 1
            # The owner must know us too before forwarded answers can come back.
            while time.monotonic() < deadline:
                decision = await node.check(clients["remote"][0], 0)
                if mode == "local" or decision.path == "forwarded":
                    return {"members": node.members()}
                await asyncio.sleep(0.05)
            raise TimeoutError(f"{role}: forwarded checks never answered: {decision}")
        if cmd == "stats":
            sans = node.sans_io
            return {
                "cpu_s": time.process_time(),
                "stats": dict(sans.stats),
                "dropped": {k: v for k, v in sans.dropped.items() if v},
                "members": node.members(),
            }
        if cmd == "closed":
            check, cl = subject(arg["kind"])
            return await closed_loop(check, cl, arg["tasks"], arg["seconds"])
        if cmd == "sequential":
            check, cl = subject(arg["kind"])
            return await sequential(check, cl, arg["seconds"])
        if cmd == "sync":
            return await sync_loop(limiter.check, clients["all"], arg["seconds"])
        if cmd == "open":
            check, cl = subject(arg["kind"])
            return await open_loop(check, cl, arg["rate"], arg["seconds"])
        if cmd == "idle":
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(arg["seconds"])
            return {
                "checks": 0,
                "elapsed_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - cpu0,
            }
        if cmd == "profile_on":
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            return True
        if cmd == "profile_off":
            assert profiler is not None
            profiler.disable()
            profiler.dump_stats(arg)
            profiler = None
            return arg
        raise ValueError(f"unknown command {cmd!r}")

    conn.send(("ok", None))
    try:
        while True:
            cmd, arg = await inbox.get()
            if cmd == "stop":
                break
            try:
                conn.send(("ok", await handle(cmd, arg)))
            except Exception as error:  # report to the driver, keep serving
                conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        loop.remove_reader(conn.fileno())
        await node.stop()
        conn.send(("ok", "stopped"))


def peer_worker(conn: Connection, redis_port: int) -> None:
    """The peer: limits' sliding-window counter on RedisStorage, driven synchronously."""
    import limits
    from limits.storage import RedisStorage
    from limits.strategies import SlidingWindowCounterRateLimiter

    storage = RedisStorage(f"redis://{HOST}:{redis_port}")
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = limits.parse(RULE)
    clients = [f"client-{i:06d}" for i in range(N_CLIENTS)]

    def hit(client: str) -> bool:
        return limiter.hit(item, client)

    def seq(seconds: float) -> dict[str, Any]:
        pc = time.perf_counter_ns
        lat: list[int] = []
        i = 0
        cpu0, t0 = time.process_time(), pc()
        end = t0 + int(seconds * 1e9)
        t = t0
        while t < end:
            s = pc()
            hit(clients[i])
            t = pc()
            lat.append(t - s)
            i = (i + 1) % N_CLIENTS
        out = {"checks": len(lat), "elapsed_s": (t - t0) / 1e9, "cpu_s": time.process_time() - cpu0}
        out.update(latency_us(lat))
        return out

    pools: dict[int, ThreadPoolExecutor] = {}

    def threads(n: int, seconds: float) -> dict[str, Any]:
        # A pool that outlives the run, so /proc/PID/task still lists its threads afterwards.
        pool = pools.setdefault(n, ThreadPoolExecutor(max_workers=n))
        barrier = threading.Barrier(n + 1)
        end_box = [0]

        def run(j: int) -> int:
            pc = time.perf_counter_ns
            i = (j * 7) % N_CLIENTS
            done = 0
            barrier.wait()
            end = end_box[0]
            while pc() < end:
                hit(clients[i])
                done += 1
                i = (i + 1) % N_CLIENTS
            return done

        futures = [pool.submit(run, j) for j in range(n)]
        cpu0, t0 = time.process_time(), time.perf_counter_ns()
        end_box[0] = t0 + int(seconds * 1e9)
        barrier.wait()
        counts = [f.result() for f in futures]
        t1 = time.perf_counter_ns()
        return {
            "checks": sum(counts),
            "elapsed_s": (t1 - t0) / 1e9,
            "cpu_s": time.process_time() - cpu0,
        }

    conn.send(("ok", None))
    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            conn.send(("ok", "stopped"))
            return
        try:
            if cmd == "sequential":
                result: Any = seq(arg["seconds"])
            elif cmd == "threads":
                result = threads(arg["threads"], arg["seconds"])
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", result))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))
