"""What the Envoy tests share: two ``meshlimit node`` processes serving gRPC, and requests.

``test_envoy_grpc.py`` calls the nodes with a gRPC client; ``test_envoy_real.py`` puts a
real Envoy in front of them. Both start the pair with :func:`node_pair`, which always
stops them (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from meshlimit.processes import HOST, NodeProcess, wait_for

Response = rls_pb2.RateLimitResponse
OK, OVER_LIMIT = Response.OK, Response.OVER_LIMIT
UNITS = Response.RateLimit.Unit


@contextlib.contextmanager
def node_pair(
    log_dir: Path, config: Path, *, extra_a: Sequence[str] = (), extra_b: Sequence[str] = ()
) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two nodes, ``b`` seeded with ``a``, each serving gRPC on a port it picks and
    reading ``config``; yields once each sees the other alive."""
    common = ["--grpc", f"{HOST}:0", "--ratelimit-config", str(config), "--seed-rng", "7"]
    a = NodeProcess("a", log_dir=log_dir, extra=[*common, *extra_a])
    b = NodeProcess("b", seeds=[a.udp_port], log_dir=log_dir, extra=[*common, *extra_b])
    try:
        a.start()
        b.start()
        wait_for("both nodes alive", lambda: _both_alive(a, b), timeout_s=15)
        yield a, b
    finally:
        for node in (a, b):  # both drain at once, then each is waited for
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in (a, b):
            node.stop()


def _both_alive(a: NodeProcess, b: NodeProcess) -> bool:
    return all(n.members() == {"a": "alive", "b": "alive"} for n in (a, b))


def stub(node: NodeProcess) -> rls_pb2_grpc.RateLimitServiceStub:
    """A client of ``node``'s rate limit service."""
    channel = grpc.insecure_channel(f"{HOST}:{node.ready_port('grpc')}")
    return rls_pb2_grpc.RateLimitServiceStub(channel)


def descriptor(
    *entries: tuple[str, str],
    override: tuple[int, int] | None = None,
    hits: int | None = None,
) -> ratelimit_pb2.RateLimitDescriptor:
    """A descriptor of ``(key, value)`` entries, with a limit override ``(requests, unit)``
    and its own ``hits_addend`` if given."""
    message = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if override is not None:
        message.limit.requests_per_unit, message.limit.unit = override
    if hits is not None:
        message.hits_addend.value = hits
    return message


def request(domain: str, *descriptors: ratelimit_pb2.RateLimitDescriptor, hits: int = 0):
    """A ``RateLimitRequest``."""
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)


def sighup(node: NodeProcess) -> None:
    """Ask ``node`` to reload its config files."""
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)


def metric(node: NodeProcess, name: str, **labels: str) -> float:
    """One sample of ``node``'s ``/metrics`` (0 when absent)."""
    import http.client

    conn = http.client.HTTPConnection(HOST, node.http_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    head = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(head + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
