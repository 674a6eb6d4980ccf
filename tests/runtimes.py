"""Shared test helpers: a real runtime on a free loopback port (always stopped), and
the records of one logger."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.runtime import Runtime

DAY_RULE = "3/day"


def free_udp_port() -> int:
    """A UDP port on loopback that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def started_runtime(
    node_id: str = "n1", seeds: list[tuple[str, int]] | None = None, **overrides: Any
) -> AsyncIterator[Runtime]:
    """A started runtime (``local`` preset, default rule 3/day unless overridden)."""
    addr = ("127.0.0.1", free_udp_port())
    overrides.setdefault("default_rule", DAY_RULE)
    runtime = Runtime(NodeConfig.preset("local", node_id, addr, **overrides), seed=1)
    try:
        await runtime.start(seeds or [])
        yield runtime
    finally:
        await runtime.stop(leave=False)


@contextmanager
def captured(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of one logger (whether or not it propagates to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
