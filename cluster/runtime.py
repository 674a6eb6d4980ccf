"""The asyncio driver of a sans-IO :class:`~meshlimit.cluster.node.Node`.

It owns the UDP socket and a single timer and makes no protocol decisions:
it feeds the node datagrams, ticks and checks with the current times, sends
what the node returns, resolves futures for tickets, and re-arms the timer at
the node's next deadline. The same node runs unchanged under the simulator.

Time: ``now_ns`` is ``time.monotonic_ns()`` (timeouts never jump) and
``wall_ns`` is ``time.time_ns()`` (windows align to wall time).

Identity: every process life gets a boot id that cannot repeat (``new_boot_id``:
the wall clock's seconds and 32 random bits from the OS), never drawn from the
seeded RNG, which ``--seed-rng`` makes repeat across restarts.

Load: at most ``max_inflight`` forwarded checks await their owners at once; further
checks wait for room in arrival order (``Runtime.check``), so that a busy cluster
answers later rather than wrongly: a check's forward timeout starts only when it is
sent, and the queue in front of the owners stays short enough to be answered well
within it. At most ``max_waiting`` checks wait; beyond that a check is answered
``overloaded`` at once (``Node.overloaded``), and so is one that waited longer than
``max_wait_ns`` when its room comes (``waited_too_long``: its client gave up). While as many checks wait as may be in
flight the runtime is ``busy``: RESP stops reading new commands until the queue is down
to a quarter (TCP then pushes back on the clients), so a loop turn never holds more work
than a few hundred checks and the answers that free room are read promptly. The
front-ends add their own bounds per connection.

Batches: a front-end's batch of checks (``check_batch``, the commands of one read) is
one future however many of its checks are forwarded, and waits for room as one. The
forward batches of a loop turn leave at its end, from the flush (``Node.flush_batches``),
not from a timer.

Late timers: libuv runs due timers before it polls the sockets, so after a long turn of
the loop a timer would judge a deadline (a forward timeout, a probe's ack) while the
answer sits unread in the socket. A timer that fires more than ``LATE_TIMER_S`` late
therefore ticks the node only after one more poll (``_on_timer``).

Names: seeds may be host names. They are resolved when the node starts and
again whenever the node asks (``SeedsWanted``: with backoff while joining, now
and then after); a name that does not resolve is logged and tried again later
(``cluster/resolve.py``). The socket may bind one address (``bind``, e.g.
``0.0.0.0``) while peers are told another (the node's ``config.addr``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from meshlimit.cluster.node import Decided, MembershipChanged, Node, SeedsWanted
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.forwarding import MAX_TIMEOUT_MULT
from meshlimit.cluster.node.node import check_args
from meshlimit.cluster.resolve import format_address, is_ip_literal, resolve_seeds
from meshlimit.cluster.wire.messages import Address
from meshlimit.core.decision import Decision

log = logging.getLogger("meshlimit.cluster")

#: Datagrams waiting in the kernel beyond this are the kernel's to drop; ours is bounded too.
MAX_DATAGRAM = 65_535
#: Forwarded checks awaiting their owners at once before new checks wait (``check``). Why
#: 256: at full speed (~30k forwarded checks/s a node) that is under 10 ms of queue, far
#: inside the forward timeout, and ~7 full datagrams per owner in flight: enough to batch.
MAX_INFLIGHT = 256
#: Checks waiting for room; beyond it a check is answered ``overloaded`` at once.
MAX_WAITING = 65_536
#: Socket buffer sizes asked for (the kernel caps them at net.core.rmem_max / wmem_max).
#: Why 4 MiB: a node that stalls for a moment (a GC pause, a loaded host) must not lose
#: the datagrams that arrive meanwhile; at the default ~200 KiB a 100 ms stall at a few
#: thousand datagrams a second overflows, and each lost batch is a forward timeout.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
#: A timer this late ticks the node only after the loop has polled its sockets again.
LATE_TIMER_S = 0.002
#: The short timer that puts one poll of the sockets before a late tick.
AFTER_POLL_S = 0.0002


def new_boot_id() -> int:
    """A 64-bit identity for this process life: the wall clock's seconds above 32 random
    bits from the OS. Two lives collide only if they start in the same second and draw
    the same 32 bits; a seeded RNG would repeat it on every restart."""
    return (time.time_ns() // 1_000_000_000 & 0xFFFF_FFFF) << 32 | secrets.randbits(32)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.runtime.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.runtime.node.dropped["socket_error"] += 1


class _Batch:
    """The forwarded checks of one front-end batch (``Runtime.check_batch``): the batch's
    decisions, filled in as the owners answer, and the one future done when the last is.
    One object and one future for the batch, never one per forwarded check."""

    __slots__ = ("decisions", "left", "future", "sent_ns")

    def __init__(
        self, decisions: list[Decision | int], future: asyncio.Future[list[Decision]], sent_ns: int
    ) -> None:
        self.decisions = decisions
        self.left = 0  # forwarded checks not decided yet
        self.future = future
        self.sent_ns = sent_ns


class Runtime:
    """Runs one node on an asyncio loop (uvloop when installed)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        seed: int | None = None,
        bind: Address | None = None,
        boot_id: int | None = None,
        max_inflight: int = MAX_INFLIGHT,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        """``seed`` seeds the node's RNG (probe order, reproducible runs); ``bind`` is the
        address the socket binds (default: ``config.addr``, the one peers are told);
        ``boot_id`` defaults to a new one (``new_boot_id``); ``max_inflight`` and
        ``max_waiting`` bound the forwarded checks in flight and those waiting for room."""
        if max_inflight < 1 or max_waiting < 0:
            raise ValueError("max_inflight must be >= 1 and max_waiting >= 0")
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        #: The longest a check waits for room before it is answered ``overloaded``
        #: (``waited_too_long``): the longest forward timeout (``_room``).
        self.max_wait_ns = MAX_TIMEOUT_MULT * config.forward_timeout_ns
        #: Waiting for room (``check``, ``check_batch``), oldest first: each a future, the
        #: checks it stands for (a batch waits as one) and when it began to wait.
        self._waiting: deque[tuple[asyncio.Future[bool], int, int]] = deque()
        self._waiting_checks = 0  # the checks of ``_waiting``
        #: True while as many checks wait for room as may be in flight: front-ends stop
        #: reading new requests (TCP pushes back on the clients) until the queue is down to
        #: a quarter of that, when ``on_not_busy`` callbacks run.
        self.busy = False
        self.on_not_busy: list[Callable[[], None]] = []
        now = time.monotonic_ns()
        boot = new_boot_id() if boot_id is None else boot_id
        self.node = Node(
            config, random.Random(seed), now_ns=now, wall_ns=time.time_ns(), boot_id=boot
        )
        self.bind = config.addr if bind is None else bind
        self._seeds: list[Address] = []  # as given: names or literal addresses
        self._resolved: list[Address] = []
        self._resolve_errors: dict[str, str] = {}
        self._resolving: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._futures: dict[int, asyncio.Future[Decision]] = {}
        #: Forwarded checks of front-end batches: ticket -> (its batch, its place in it).
        self._batched: dict[int, tuple[_Batch, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._after_poll = False  # the armed timer is a late tick's second chance
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self.on_membership: Callable[[MembershipChanged], None] | None = None
        #: Called with ``(elapsed_ns, decision path)`` when a forwarded check is decided
        #: (``cluster/daemon/metrics.py``'s forward-latency histogram); None: not timed.
        self.on_forwarded: Callable[[int, str], None] | None = None

    async def start(self, seeds: list[Address]) -> None:
        """Bind the socket and begin joining through ``seeds`` (names or addresses);
        :meth:`wait_ready` waits for the join to complete."""
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=self.bind
        )
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        self._seeds = list(seeds)
        addresses = await self._resolve() if seeds else []
        self.node.start(addresses, now_ns=time.monotonic_ns(), resolve=bool(seeds))
        self._pump()

    @property
    def ready(self) -> bool:
        """Joined (or without seeds) and not left: see ``Node.ready``."""
        return self.node.ready

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until the node has joined; False if ``timeout_s`` passed first."""
        if not self.node.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self.node.ready  # False too once the node has left

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)``: why the node is not ready, in words an operator can act on."""
        node = self.node
        if node.ready:
            return True, "joined" if self._seeds else "no seeds: a cluster of one"
        if self._transport is None or not node.joining.started:
            return False, "not started"
        if node.joining.left:
            return False, "left the cluster (draining)"
        names = ", ".join(format_address(s) for s in self._seeds)
        if node.joining.awaiting_seeds:
            errors = "; ".join(f"{k}: {v}" for k, v in self._resolve_errors.items())
            return False, f"joining: no seed resolved to an address yet ({errors or names})"
        tried = ", ".join(format_address(s) for s in node.joining.seeds)
        return False, f"joining: no seed has answered yet (seeds {names}; tried {tried})"

    def leave(self) -> None:
        """Leave the cluster gracefully now (hand over counts, tell the others); the
        socket stays open so that checks made meanwhile still reach their owners."""
        if self._transport is not None and not self.node.joining.left:
            self.node.leave(now_ns=time.monotonic_ns())
            self._pump()

    async def check(self, client: str, cost: int = 1) -> Decision:
        """Decide a check, waiting for the owner when the check is forwarded, and first
        for room when ``max_inflight`` forwarded checks are already in flight."""
        if self._waiting or len(self.node.forwarding.pending) >= self.max_inflight:
            if self._waiting_checks >= self.max_waiting:
                return self.node.overloaded(client, "waiting_full")
            if not await self._room(1):
                return self.node.overloaded(client, "waited_too_long")
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

    def check_now(self, client: str, cost: int = 1) -> Decision | asyncio.Future[Decision]:
        """:meth:`check` without a coroutine: the decision itself when the node decides at
        once (owner-local, local mode, degraded, overloaded), else a future of it (a
        forwarded check; or a task of :meth:`check` while checks wait for room). The
        front-ends' hot path: no coroutine, task or loop turn for a check decided here.
        Bad arguments raise as :meth:`check` does, here or (waiting) from the task."""
        if self._waiting or len(self.node.forwarding.pending) >= self.max_inflight:
            return asyncio.ensure_future(self.check(client, cost))
        now_ns = time.monotonic_ns()
        result = self.node.check(client, cost, now_ns=now_ns, wall_ns=time.time_ns())
        if not self._flush_scheduled:
            self._schedule_flush()
        return self._ticket(result, now_ns) if isinstance(result, int) else result

    def check_batch(
        self, clients: list[str], cost: int = 1
    ) -> list[Decision] | asyncio.Future[list[Decision]]:
        """A front-end's batch (the commands of one read) at one instant: the decisions in
        order when the node decides them all now (owner-local, local mode...), else one
        future of them all, done when the owners have answered every forwarded check of the
        batch. One future for the batch, however many of its checks are forwarded, and
        none for the owner-local ones: the front-end answers the batch in one write. While
        checks wait for room the batch waits as one (one task), counted as its checks.
        Raises ``ValueError``/``TypeError`` for a bad client or cost, before any check."""
        if self._waiting or len(self.node.forwarding.pending) >= self.max_inflight:
            check_args(clients, cost)  # raised now, as when no check waits
            if self._waiting_checks + len(clients) > self.max_waiting:
                return [self.node.overloaded(c, "waiting_full") for c in clients]
            return asyncio.ensure_future(self._batch_after_room(clients, cost))
        return self._check_batch_now(clients, cost)

    async def _batch_after_room(self, clients: list[str], cost: int) -> list[Decision]:
        if not await self._room(len(clients)):
            return [self.node.overloaded(c, "waited_too_long") for c in clients]
        decided = self._check_batch_now(clients, cost)
        return decided if type(decided) is list else await decided  # type: ignore[misc]

    def _check_batch_now(
        self, clients: list[str], cost: int
    ) -> list[Decision] | asyncio.Future[list[Decision]]:
        node = self.node
        now_ns, wall_ns = time.monotonic_ns(), time.time_ns()
        decided = node.check_batch(clients, cost, now_ns=now_ns, wall_ns=wall_ns)
        if not self._flush_scheduled:
            self._schedule_flush()  # forwarded checks made in this loop turn leave together
        batch: _Batch | None = None
        batched = self._batched
        for i, result in enumerate(decided):
            if type(result) is int:
                if batch is None:
                    assert self._loop is not None, "runtime not started"
                    batch = _Batch(decided, self._loop.create_future(), now_ns)
                batched[result] = (batch, i)
                batch.left += 1
        if batch is None:
            return decided  # type: ignore[return-value]  # no ticket: every one a Decision
        return batch.future

    def _ticket(self, ticket: int, sent_ns: int) -> asyncio.Future[Decision]:
        """The future of a forwarded check's decision (``_pump`` resolves it)."""
        assert self._loop is not None, "runtime not started"
        future: asyncio.Future[Decision] = self._loop.create_future()
        self._futures[ticket] = future
        if self.on_forwarded is not None:
            future.add_done_callback(partial(self._forwarded, sent_ns))
        return future

    def _forwarded(self, sent_ns: int, future: asyncio.Future[Decision]) -> None:
        """A forwarded check of :meth:`check_now` was decided: time it (``on_forwarded``)."""
        if self.on_forwarded is not None and not future.cancelled():
            self.on_forwarded(time.monotonic_ns() - sent_ns, future.result().path)

    async def _room(self, checks: int) -> bool:
        """Wait, in arrival order, until ``checks`` forwarded checks may be sent (``_pump``
        lets waiters go as answers free room; a batch goes once any room is free, so the
        checks in flight exceed ``max_inflight`` by less than one batch). False if it had
        waited longer than ``max_wait_ns`` when room came, the longest forward timeout
        (``MAX_TIMEOUT_MULT`` times the configured one): its client has given up by then,
        or soon will, so it is answered ``overloaded`` at once rather than sent, and the
        room goes to the next waiter. Without it the queue a 3 x 300 connections x P64
        overload left behind took seconds to drain after the clients stopped, every check
        of it forwarded for nobody."""
        assert self._loop is not None, "runtime not started"
        room: asyncio.Future[bool] = self._loop.create_future()
        self._waiting.append((room, checks, time.monotonic_ns()))
        self._waiting_checks += checks
        self.node.stats["checks_waited"] += checks
        if not self.busy and self._waiting_checks >= self.max_inflight:
            self.busy = True
            self.node.stats["busy_periods"] += 1
        self._schedule_flush()
        return await room

    def _let_waiters_go(self) -> None:
        free = self.max_inflight - len(self.node.forwarding.pending)
        waiting = self._waiting
        too_old_ns = time.monotonic_ns() - self.max_wait_ns if waiting else 0
        while waiting and free > 0:
            room, checks, since_ns = waiting.popleft()
            self._waiting_checks -= checks
            if room.done():  # a cancelled caller's place goes to the next
                continue
            if since_ns < too_old_ns:  # waited too long: answered at once, taking no room
                room.set_result(False)
                continue
            room.set_result(True)
            free -= checks
        if self.busy and self._waiting_checks <= self.max_inflight // 4:
            self.busy = False
            for callback in list(self.on_not_busy):
                callback()

    def set_rule(self, key: str, value: object) -> bool:
        """Change a rule entry (``default``, ``tier:NAME``, ``client:ID``) and spread it."""
        changed = self.node.set_rule(key, value, now_ns=time.monotonic_ns(), wall_ns=time.time_ns())  # type: ignore[arg-type]
        self._pump()
        return changed

    async def stop(self, *, leave: bool = True, linger_s: float = 0.2) -> None:
        """Leave gracefully (hand over counts, tell the others), then close the socket."""
        if leave and self._transport is not None and not self.node.joining.left:
            self.leave()
            await asyncio.sleep(linger_s)
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for future in self._futures.values():
            if not future.done():
                future.cancel()
        self._futures.clear()
        for batch, _ in self._batched.values():
            if not batch.future.done():
                batch.future.cancel()
        self._batched.clear()
        while self._waiting:
            self._waiting.popleft()[0].cancel()
        self._waiting_checks = 0

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
        now_ns = time.monotonic_ns()
        if not self._after_poll and now_ns - self._timer_at > LATE_TIMER_S * 1e9:
            # Late: answers to what this tick would time out may be unread in the socket.
            # Tick after the loop has polled once more (a timer, not call_soon: both loops
            # run ready callbacks before they poll, timers due later only after).
            assert self._loop is not None
            self._after_poll = True
            self._timer_at = now_ns
            self._timer = self._loop.call_later(AFTER_POLL_S, self._on_timer)
            self.node.stats["late_timers"] += 1
            return
        self._after_poll = False
        self.node.tick(now_ns=now_ns, wall_ns=time.time_ns())
        self._pump()

    def _pump(self) -> None:
        """Send what the node produced, resolve decided tickets, re-arm the timer."""
        self._flush_scheduled = False
        node = self.node
        if self._transport is not None:
            # The batches of this turn leave now, not from a timer (a timer costs a tick
            # of the node, a loop turn, and more when the loop is late: ``_on_timer``).
            node.flush_batches(now_ns=time.monotonic_ns())
            # In the node's order: datagrams with probes and acks first, then data.
            for datagram, addr in node.datagrams_to_send():
                try:
                    self._transport.sendto(datagram, addr)
                except (ValueError, OSError):  # a name, or another family: a peer's bad addr
                    node.dropped["send_unroutable"] += 1
        batched = self._batched
        decided_ns = 0
        for event in node.events():
            if type(event) is Decided:
                waiter = batched.pop(event.ticket, None)
                if waiter is not None:
                    if not decided_ns:
                        decided_ns = time.monotonic_ns()
                    self._batch_decided(*waiter, event.decision, decided_ns)
                    continue
                future = self._futures.pop(event.ticket, None)
                if future is not None and not future.done():
                    future.set_result(event.decision)
            elif isinstance(event, MembershipChanged):
                self._log_membership(event)
            elif isinstance(event, SeedsWanted):
                self._resolve_again(event)
        if self._waiting:
            self._let_waiters_go()
        if node.ready and not self._ready.is_set():
            self._ready.set()
            log.info("joined the cluster", extra={"members": len(node.membership.alive_nodes())})
        self._arm_timer()

    def _batch_decided(self, batch: _Batch, i: int, decision: Decision, now_ns: int) -> None:
        """A forwarded check of a front-end batch was decided: in its place, timed
        (``on_forwarded``); the batch's future is done with the last of them."""
        batch.decisions[i] = decision
        if self.on_forwarded is not None:
            self.on_forwarded(now_ns - batch.sent_ns, decision.path)
        batch.left -= 1
        if batch.left == 0 and not batch.future.done():
            batch.future.set_result(batch.decisions)  # type: ignore[arg-type]  # no None left

    # --- names ------------------------------------------------------------------------

    async def _resolve(self) -> list[Address]:
        """Every address of the seeds now; names that do not resolve are logged."""
        family = socket.AF_UNSPEC
        if self._transport is not None:
            family = self._transport.get_extra_info("socket").family
        addresses, errors = await resolve_seeds(self._seeds, family)
        for seed, error in errors.items():
            if self._resolve_errors.get(seed) != error:
                log.warning("cannot resolve seed", extra={"seed": seed, "error": error})
        if addresses != self._resolved and not all(is_ip_literal(h) for h, _ in self._seeds):
            shown = " ".join(map(format_address, addresses))
            log.info("seeds resolved", extra={"addresses": shown})
        self._resolve_errors, self._resolved = errors, addresses
        return addresses

    def _resolve_again(self, event: SeedsWanted) -> None:
        """The node asks for fresh seed addresses: resolve in the background."""
        if not self.node.ready:
            reason = self.readiness()[1]
            log.warning(
                "not joined yet; trying the seeds again",
                extra={"attempt": event.attempt, "reason": reason},
            )
        if self._resolving is None or self._resolving.done():
            self._resolving = asyncio.ensure_future(self._set_seeds())

    async def _set_seeds(self) -> None:
        addresses = await self._resolve()
        if self._transport is not None:
            self.node.set_seeds(addresses, now_ns=time.monotonic_ns())
            self._pump()

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
