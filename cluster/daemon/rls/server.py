"""The Envoy front-end of ``meshlimit node``: a grpc.aio server, its config files, its metrics.

Theory of operation. :class:`EnvoyFrontend` is what the daemon (``main.py``)
holds with ``--grpc`` or ``--ratelimit-config``: the files' :class:`ConfigLoader`
(loaded once at start, where a bad file stops the daemon with its file, line,
path and key; later reloaded on SIGHUP and on change, a bad file then keeping the
rules in force), the per-descriptor :class:`DescriptorStats` (served on
``/metrics`` by :meth:`EnvoyFrontend.collector`) and, with ``--grpc``, one gRPC
server on the node's own asyncio loop (grpc.aio) with two services: envoy's rate
limit service (``service.py``) and the standard ``grpc.health.v1.Health``,
SERVING while the node is ready (as ``/readyz``), NOT_SERVING once it drains.

Like the HTTP and RESP front-ends it binds first (:meth:`EnvoyFrontend.bind`: a
busy port is reported before the node tells any seed it exists) and serves once
the runtime runs (:meth:`EnvoyFrontend.serve`). ``SO_REUSEPORT`` is off, so a busy
port fails instead of being shared with another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from meshlimit.cluster.daemon.rls.loader import POLL_INTERVAL_S, ConfigLoader, log_loaded
from meshlimit.cluster.daemon.rls.service import RateLimitServicer, RlsConfig
from meshlimit.cluster.daemon.rls.stats import DescriptorStats, StatsCollector

if TYPE_CHECKING:
    from meshlimit.cluster.runtime import Runtime

log = logging.getLogger("meshlimit.envoy")

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
#: How often health follows the node's readiness.
HEALTH_INTERVAL_S = 0.5


class GrpcServer:
    """Envoy's rate limit service and health checking on one gRPC port."""

    def __init__(self, runtime: Runtime, servicer: RateLimitServicer, config: RlsConfig) -> None:
        self.runtime = runtime
        self.servicer = servicer
        self.config = config
        self.health = health_aio.HealthServicer()
        self._server: Any = None
        self._watch: asyncio.Task[None] | None = None

    async def bind(self, host: str, port: int) -> tuple[str, int]:
        """Bind ``host:port`` (port 0: any free one), not yet serving; the bound address.
        ``OSError`` if it cannot be bound."""
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),  # a busy port must fail, not be shared
                ("grpc.max_receive_message_length", self.config.max_request_bytes),
            ],
            maximum_concurrent_rpcs=self.config.max_concurrent_calls,
        )
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(target)
        except RuntimeError as error:
            raise OSError(f"cannot bind {target}: {error}") from None
        if not bound:
            raise OSError(f"cannot bind {target}")
        self._server = server
        return host, bound

    async def serve(self) -> None:
        """Start answering calls; health follows the node's readiness."""
        assert self._server is not None, "bind() first"
        await self._server.start()
        await self._set_health()
        self._watch = asyncio.create_task(self._follow_readiness())

    async def drain(self) -> None:
        """Health turns NOT_SERVING (the node is leaving); calls are still answered."""
        self._stop_watch()
        await self.health.enter_graceful_shutdown()

    async def close(self, grace_s: float) -> None:
        """Stop; calls in flight get ``grace_s`` to finish. Idempotent."""
        self._stop_watch()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace_s)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _set_health(self) -> None:
        status = health_pb2.HealthCheckResponse
        state = status.SERVING if self.runtime.ready else status.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, state)

    async def _follow_readiness(self) -> None:
        await self.runtime.wait_ready()  # SERVING the moment the node has joined
        await self._set_health()
        while True:  # then follow it (a node that left is no longer ready)
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._set_health()


class EnvoyFrontend:
    """The daemon's Envoy side: config files, statistics and (with ``--grpc``) the server.

    ``paths`` are the ``--ratelimit-config`` files and folders; :meth:`load` must be
    called once before serving (it raises ``RlsConfigError`` for a bad file)."""

    def __init__(
        self,
        runtime: Runtime,
        paths: Sequence[str],
        *,
        merge_domains: bool = False,
        algorithm: str | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.config = RlsConfig(algorithm=algorithm or "fixed_window")
        self.stats = DescriptorStats()
        self.loader = ConfigLoader(
            paths,
            merge_domains=merge_domains,
            poll_interval_s=poll_interval_s,
            counts=self.stats.service,
        )
        self.servicer = RateLimitServicer(runtime, self.loader, self.stats, self.config)
        self.server: GrpcServer | None = None
        self.runtime = runtime
        self._watch: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Load the files now (``RlsConfigError`` names file, line, path and key)."""
        config = self.loader.load() if self.loader.paths else None
        if config is not None:
            log_loaded(config)

    async def bind(self, host: str, port: int) -> tuple[str, int]:
        """Bind the gRPC server (not yet serving); its address."""
        self.server = GrpcServer(self.runtime, self.servicer, self.config)
        return await self.server.bind(host, port)

    async def serve(self, *, watch: bool) -> None:
        """Serve gRPC (if bound) and, with ``watch``, reload the files when they change."""
        if self.server is not None:
            await self.server.serve()
        if watch and self.loader.paths and self.loader.poll_interval_s > 0:
            self._watch = asyncio.create_task(self.loader.watch())

    def reload(self, reason: str = "sighup") -> bool:
        """Reload the files (SIGHUP); False, and the rules in force kept, if one is bad."""
        return self.loader.reload(reason) if self.loader.paths else True

    def collector(self) -> StatsCollector:
        """The per-descriptor statistics as a ``prometheus_client`` collector."""
        return StatsCollector(self.stats)

    async def drain(self) -> None:
        """Health says NOT_SERVING; calls are still answered."""
        if self.server is not None:
            await self.server.drain()

    async def close(self, grace_s: float) -> None:
        """Stop watching and serving. Idempotent."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self.server is not None:
            await self.server.close(grace_s)
