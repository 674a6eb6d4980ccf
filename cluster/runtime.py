"""The asyncio driver of a sans-IO :class:`~meshlimit.cluster.node.Node`.

It owns the UDP socket and a single timer and makes no protocol decisions:
it feeds the node datagrams, ticks and checks with the current times, sends
what the node returns, resolves futures for tickets, and re-arms the timer at
the node's next deadline. The same node runs unchanged under the simulator.

Time: ``now_ns`` is ``time.monotonic_ns()`` (timeouts never jump) and
``wall_ns`` is ``time.time_ns()`` (windows align to wall time).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from meshlimit.cluster.node import Decided, MembershipChanged, Node
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.messages import Address
from meshlimit.core.decision import Decision

log = logging.getLogger("meshlimit.cluster")

#: Datagrams waiting in the kernel beyond this are the kernel's to drop; ours is bounded too.
MAX_DATAGRAM = 65_535


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.runtime.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.runtime.node.dropped["socket_error"] += 1


class Runtime:
    """Runs one node on an asyncio loop (uvloop when installed)."""

    def __init__(self, config: NodeConfig, *, seed: int | None = None) -> None:
        now = time.monotonic_ns()
        self.node = Node(config, random.Random(seed), now_ns=now, wall_ns=time.time_ns())
        self._transport: asyncio.DatagramTransport | None = None
        self._futures: dict[int, asyncio.Future[Decision]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self.on_membership: Callable[[MembershipChanged], None] | None = None
        #: Called with ``(elapsed_ns, decision path)`` when a forwarded check is decided
        #: (``cluster/daemon/metrics.py``'s forward-latency histogram); None: not timed.
        self.on_forwarded: Callable[[int, str], None] | None = None

    async def start(self, seeds: list[Address]) -> None:
        """Bind the socket and join through ``seeds``."""
        self._loop = asyncio.get_running_loop()
        host, port = self.node.config.addr
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, port)
        )
        self._transport = transport  # type: ignore[assignment]
        self.node.start(seeds, now_ns=time.monotonic_ns())
        self._pump()

    async def check(self, client: str, cost: int = 1) -> Decision:
        """Decide a check, waiting for the owner when the check is forwarded."""
        now_ns = time.monotonic_ns()
        result = self.node.check(client, cost, now_ns=now_ns, wall_ns=time.time_ns())
        if isinstance(result, Decision):
            self._schedule_flush()
            return result
        assert self._loop is not None, "runtime not started"
        future: asyncio.Future[Decision] = self._loop.create_future()
        self._futures[result] = future
        self._schedule_flush()  # checks made in this loop turn leave together
        decision = await future
        if self.on_forwarded is not None:
            self.on_forwarded(time.monotonic_ns() - now_ns, decision.path)
        return decision

    def set_rule(self, key: str, value: object) -> bool:
        """Change a rule entry (``default``, ``tier:NAME``, ``client:ID``) and spread it."""
        changed = self.node.set_rule(key, value, now_ns=time.monotonic_ns(), wall_ns=time.time_ns())  # type: ignore[arg-type]
        self._pump()
        return changed

    async def stop(self, *, leave: bool = True, linger_s: float = 0.2) -> None:
        """Leave gracefully (hand over counts, tell the others), then close the socket."""
        if leave and self._transport is not None:
            self.node.leave(now_ns=time.monotonic_ns())
            self._pump()
            await asyncio.sleep(linger_s)
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for future in self._futures.values():
            if not future.done():
                future.cancel()
        self._futures.clear()

    # --- driving the node -------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: Address) -> None:
        """Feed a datagram to the node; the replies go out on the next flush."""
        self.node.receive(data, addr, now_ns=time.monotonic_ns(), wall_ns=time.time_ns())
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Coalesce: everything produced in this loop iteration leaves in one flush,
        # which is where replies to a batch of checks are batched too.
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._pump)

    def _on_timer(self) -> None:
        self._timer = None
        self.node.tick(now_ns=time.monotonic_ns(), wall_ns=time.time_ns())
        self._pump()

    def _pump(self) -> None:
        """Send what the node produced, resolve decided tickets, re-arm the timer."""
        self._flush_scheduled = False
        node = self.node
        if self._transport is not None:
            for datagram, addr in node.datagrams_to_send():
                self._transport.sendto(datagram, addr)
        for event in node.events():
            if isinstance(event, Decided):
                future = self._futures.pop(event.ticket, None)
                if future is not None and not future.done():
                    future.set_result(event.decision)
            elif isinstance(event, MembershipChanged):
                self._log_membership(event)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._loop is None:
            return
        deadline = self.node.next_deadline()
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        delay_s = max(0.0, (deadline - time.monotonic_ns()) / 1e9)
        self._timer_at = deadline
        self._timer = self._loop.call_later(min(delay_s, 3600.0), self._on_timer)

    def _log_membership(self, event: MembershipChanged) -> None:
        from meshlimit.cluster.wire.messages import MemberState

        change = event.event
        old = "new" if change.old_state is None else MemberState.NAMES.get(change.old_state)
        log.info(
            "member %s %s -> %s addr=%s:%d",
            change.node,
            old,
            MemberState.NAMES.get(change.new_state),
            change.addr[0],
            change.addr[1],
        )
        if self.on_membership is not None:
            self.on_membership(event)


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed; True if it is."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
