"""The RESP front-end of a node: any Redis client can check limits (RESP2, or RESP3 via HELLO).

Theory of operation. One :class:`asyncio.Protocol` per connection feeds the
bytes it reads to a :class:`~meshlimit.cluster.daemon.resp_protocol.CommandReader`
(hiredis, within the frame bound), takes every complete command of the read at
once (pipelining) and runs them in order; replies go out in command order, each
as soon as it and every reply before it are ready, the ready ones of a read in
one write, made at the end of the loop turn with the other connections' writes
(``RespServer.write_soon``). Plain ``ML.CHECK client`` commands in a row run as one
batch of the runtime (``Runtime.check_batch``: one clock reading, no coroutine, task or
future for a check the node decides itself, one future for the batch when any of its
checks is forwarded), so a pipelined burst of checks costs one call and one write; the
commands after the batch are not held back by it.

Four modules, one job each: ``resp_protocol.py`` reads commands from the
byte stream and encodes replies; ``resp_commands.py`` runs the limiter's commands
(``PING``, ``ML.CHECK``, ``ML.RULE``, ``ML.RESET``, ``CL.THROTTLE``; it documents
each, and what CL.THROTTLE costs the cluster); ``resp_session.py`` the connection
and server commands Redis tooling sends (``HELLO``, ``CLIENT``, ``ECHO``,
``SELECT``, ``COMMAND``), with each connection's :class:`Session`; this one serves
them: the listening socket, the connections, the order of their replies, their
bounds. ``QUIT`` belongs to the connection: ``+OK``, then it closes.

Bad input. Anything but an array of bulk strings, or a command frame larger
than ``max_frame_bytes``, is answered ``-ERR Protocol error: ...`` after the
replies already due, and the connection is closed, as Redis does. Unknown
commands, wrong arity, non-integers and bad client ids are answered with an
``-ERR`` naming the problem and the connection carries on. Nothing a client
sends raises out of this module; unexpected errors are logged and answered
``-ERR internal error``.

Bounds (:class:`RespConfig`): frame size, arguments per command, connections
(one more is told ``-ERR max number of clients reached`` and closed), replies
queued per connection (reading pauses until the client catches up, as it
does when the client stops reading its replies), and an idle timeout.
Refusals are counted in :attr:`RespServer.stats`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from dataclasses import dataclass
from typing import Protocol, cast

from meshlimit.cluster.daemon.resp_commands import Reply, RespCommands
from meshlimit.cluster.daemon.resp_protocol import OK, CommandReader, encode_error
from meshlimit.cluster.daemon.resp_session import Session
from meshlimit.cluster.runtime import Runtime

log = logging.getLogger("meshlimit.resp")


@dataclass(frozen=True, slots=True)
class RespConfig:
    """Bounds and timings of the RESP front-end."""

    max_frame_bytes: int = 64 * 1024
    """Largest command frame, in bytes; larger is a protocol error and the connection closes.
    Why 64 KiB: the longest valid check (CL.THROTTLE with a 244-byte key) is about 330 bytes;
    the rest is room for PING messages, and it caps what one client makes the node hold."""
    max_args: int = 64
    """Most arguments in one command, the name included; more is refused with an error.
    Why 64: the commands take at most 6; a higher bound only spares a client's odd retries."""
    max_connections: int = 1024
    """Open connections at most; one more is told so and closed. Why 1,024: Redis clients pool
    a few connections per process, and the bound keeps one front-end from using up the
    process's descriptors unnoticed (with the common soft limit of 1,024, raise ``ulimit -n``
    to use them all)."""
    max_pipeline: int = 1024
    """Replies owed on one connection before its reading pauses. Why 1,024: a client's deep
    pipeline keeps the node busy without letting one client queue unbounded work."""
    idle_timeout_s: float = 300.0
    """A connection that sends nothing and is owed nothing for this long is closed. Why
    300 s: Redis clients keep pooled connections open; this only reaps abandoned ones."""
    shutdown_grace_s: float = 2.0
    """At shutdown, commands already read get this long to be answered. Why 2 s: a forwarded
    check is decided within the forward timeout, at most a second in every preset."""
    throttle_registry_share: int = 500_000
    """Most per-call CL.THROTTLE rules a node keeps; past it, the one closest to expiry is
    evicted (never refused, never an operator's rule). Why 500,000: half the registry's
    million, so that clients inventing keys can never crowd out the operators' rules."""
    rule_spread_wait_s: float = 0.05
    """A CL.THROTTLE answered under another rule (the key's owner has not yet received the
    rule this node just wrote) is retried once after this wait, then refused with
    ``-TRYAGAIN``. Why 50 ms: many round trips on a LAN, short for a caller."""

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "max_args",
            "max_connections",
            "max_pipeline",
            "throttle_registry_share",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.idle_timeout_s <= 0 or self.shutdown_grace_s < 0 or self.rule_spread_wait_s < 0:
            raise ValueError("idle_timeout_s must be positive, the other times not negative")


class RespServer:
    """Serves RESP on a TCP address over a started :class:`Runtime`."""

    def __init__(self, runtime: Runtime, config: RespConfig | None = None) -> None:
        self.runtime = runtime
        self.config = config or RespConfig()
        #: Connections, commands and refusals by kind (``protocol_errors``, ``oversized``...).
        self.stats: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        #: Connections paused because the runtime is busy (``Runtime.busy``).
        self._paused_busy: set[_Connection] = set()
        #: Connections with replies to write at the end of this loop turn (``_write_out``).
        self._outgoing: list[_Connection] = []
        runtime.on_not_busy.append(self._not_busy)
        self.commands = RespCommands(
            runtime,
            self.stats,
            throttle_registry_share=self.config.throttle_registry_share,
            rule_spread_wait_s=self.config.rule_spread_wait_s,
        )

    def _not_busy(self) -> None:
        """The runtime has room again: read from the connections paused for it."""
        paused, self._paused_busy = self._paused_busy, set()
        for connection in paused:
            connection.resume_busy()

    def write_soon(self, connection: _Connection) -> None:
        """Write ``connection``'s replies once every read of this loop turn has run."""
        outgoing = self._outgoing
        if not outgoing:
            asyncio.get_running_loop().call_soon(self._write_out)
        outgoing.append(connection)

    def _write_out(self) -> None:
        """The replies of a loop turn, one write per connection, back to back. Why not at
        once: a client waiting for its replies is woken by each write, and a write that wakes
        a sleeping client costs the node several times one that finds it awake; writes
        made in a row, as Redis makes them before it sleeps, find more clients awake (on a
        saturated node, about a tenth less CPU per pipelined check; docs/performance.md)."""
        outgoing, self._outgoing = self._outgoing, []
        for connection in outgoing:
            connection.write_now()

    def execute(self, args: list[bytes], session: Session | None = None) -> Reply:
        """Run one command: its reply now, or a future of it. Never raises."""
        return self.commands.execute(args, session)

    async def start(self, host: str, port: int, *, serve: bool = True) -> tuple[str, int]:
        """Bind ``host:port`` (port 0: any free one) and return the bound address.

        With ``serve=False`` connections wait in the backlog until :meth:`serve`:
        the daemon binds before the node joins, and serves once it has.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, start_serving=serve
        )
        return self.address

    async def serve(self) -> None:
        """Start accepting connections (after ``start(..., serve=False)``)."""
        assert self._server is not None, "start() first"
        await self._server.start_serving()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        assert self._server is not None, "start() first"
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    async def close(self) -> None:
        """Stop accepting, answer the commands already read (up to the grace), then close."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.stop_reading()
        owed = [c.drained() for c in connections if c.owes_replies()]
        if owed:
            await asyncio.wait(owed, timeout=self.config.shutdown_grace_s)
        for connection in connections:
            connection.close()
        await server.wait_closed()


# --- connections ----------------------------------------------------------------------

_MAX_CLIENTS = encode_error("max number of clients reached")
#: ``ML.CHECK`` as clients spell it; other spellings take the general dispatch.
_ML_CHECK = frozenset((b"ML.CHECK", b"ml.check"))
_SHUTTING_DOWN = encode_error("the node is shutting down")


class _Transport(Protocol):
    """What a connection uses of its transport: asyncio's ``Transport``, or uvloop's,
    which has the same methods but is no subclass of it."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One client: parse, run, reply in order; bounded, paced, reaped when idle."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.config = server.config
        self.loop = asyncio.get_running_loop()
        self.transport: _Transport | None = None
        self.reader = CommandReader(self.config.max_frame_bytes)
        self.replies: deque[Reply] = deque()
        self.waiting_on: asyncio.Future[bytes] | None = None
        self.paused: set[str] = set()
        self.reading = True  # False once a protocol error, QUIT or shutdown ends the input
        self.close_when_drained = False
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.session = server.commands.new_session()
        #: Replies ready, in order, not yet handed to the transport (``RespServer.write_soon``).
        self.outbox: list[bytes] = []

    # --- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(_Transport, transport)  # uvloop's is no asyncio.Transport
        stats = self.server.stats
        if len(self.server._connections) >= self.config.max_connections:
            stats["connections_refused"] += 1
            self.reading = False
            self.transport.write(_MAX_CLIENTS)
            self.transport.close()
            return
        stats["connections"] += 1
        self.server._connections.add(self)
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(self.config.idle_timeout_s, self._on_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.server._paused_busy.discard(self)
        self.reading = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        # Nobody to answer: checks still waiting for room are withdrawn (cancelling a reply
        # cancels what it waits for), so a queue of departed clients is not forwarded.
        for reply in self.replies:
            if not isinstance(reply, bytes):
                reply.cancel()
        self.replies.clear()
        self.outbox.clear()
        self._wake_drain_waiters()

    def data_received(self, data: bytes) -> None:
        if not self.reading:
            return
        self.last_active = self.loop.time()
        self.reader.feed(data)
        self._flush(self._run_commands())
        if len(self.replies) >= self.config.max_pipeline:
            self._pause("pipeline")
        if self.server.runtime.busy and self.reading:
            # Backpressure: leave the next commands in the socket until checks drain.
            self._pause("busy")
            self.server._paused_busy.add(self)

    def resume_busy(self) -> None:
        self._resume("busy")

    def eof_received(self) -> bool:
        # The client wrote its last command: answer what it sent, then close.
        self.reading = False
        self.close_when_drained = True
        self._flush()
        return True  # keep the transport open for the replies still owed

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    # --- for the server ---------------------------------------------------------------

    def owes_replies(self) -> bool:
        return bool(self.replies)

    def drained(self) -> asyncio.Future[None]:
        """A future done once every reply owed has been written (or the client left)."""
        future: asyncio.Future[None] = self.loop.create_future()
        if self.replies and self.transport is not None and not self.transport.is_closing():
            self.drain_waiters.append(future)
        else:
            future.set_result(None)
        return future

    def stop_reading(self) -> None:
        """Take no more commands (shutdown); those read are still answered."""
        self.reading = False
        self._pause("shutdown")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.write_now()
            if self.replies:
                self.transport.write(_SHUTTING_DOWN)
            self.transport.close()

    # --- parsing and running ----------------------------------------------------------

    def _run_commands(self) -> list[bytes]:
        """Run every complete command read; the replies ready to write before any in
        ``replies`` (those wait for a reply before them that is not ready yet). Plain
        ``ML.CHECK client`` commands in a row run as one batch (``ml_check_batch``)."""
        frames, error = self.reader.commands()
        config = self.config
        commands = self.server.commands
        ready: list[bytes] = []
        batch: list[bytes] = []  # the clients of plain ML.CHECKs in a row
        plain_ok = config.max_args >= 2
        for frame in frames:
            if len(frame) == 2 and frame[0] in _ML_CHECK and plain_ok:  # the hot path
                batch.append(frame[1])
                continue
            if batch:
                self._queue(commands.ml_check_batch(batch), ready)
                batch = []
            reply: Reply
            if len(frame) > config.max_args:
                self.server.stats["command_errors"] += 1
                reply = encode_error(
                    f"too many arguments ({len(frame)}; at most {config.max_args})"
                )
            elif frame[0].upper() == b"QUIT":
                self._queue([OK], ready)
                self.reading = False
                self.close_when_drained = True
                return ready  # what follows QUIT is never run
            else:
                reply = commands.execute(frame, self.session)
            self._queue([reply], ready)
        if batch:
            self._queue(commands.ml_check_batch(batch), ready)
        if error is not None:
            if error.oversized:
                self.server.stats["oversized"] += 1
            self._protocol_error(str(error))
        return ready

    def _queue(self, replies: list[Reply], ready: list[bytes]) -> None:
        """Replies in command order: to ``ready`` while every reply before them is ready,
        then to ``self.replies``."""
        owed = self.replies
        for reply in replies:
            if owed or type(reply) is not bytes:
                owed.append(reply)
            else:
                ready.append(reply)

    def _protocol_error(self, message: str) -> None:
        """Answer what was read before, then the error, then close (as Redis does)."""
        self.server.stats["protocol_errors"] += 1
        self.replies.append(encode_error(message))
        self.reading = False
        self.close_when_drained = True
        self._pause("closing")

    # --- replying ---------------------------------------------------------------------

    def _flush(self, out: list[bytes] | None = None) -> None:
        """Write ``out`` (replies due first) and every reply that is ready and has no
        unready reply before it, in one write."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if out is None:
            out = []
        replies = self.replies
        while replies:
            head = replies[0]
            if isinstance(head, bytes):
                out.append(head)
            elif head.done():
                out.append(self._result(head))
            else:
                if self.waiting_on is not head:
                    self.waiting_on = head
                    head.add_done_callback(self._on_reply_ready)
                break
            replies.popleft()
        if out:
            if not self.outbox:
                self.server.write_soon(self)
            self.outbox += out
        if not replies:
            self._wake_drain_waiters()
            if self.close_when_drained:
                self.write_now()
                transport.close()
                return
        if "pipeline" in self.paused and len(replies) <= self.config.max_pipeline // 2:
            self._resume("pipeline")

    def write_now(self) -> None:
        """Hand the replies of the outbox to the transport, in one write."""
        outbox = self.outbox
        if outbox:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
            outbox.clear()

    def _on_reply_ready(self, future: asyncio.Future[bytes]) -> None:
        if self.waiting_on is future:
            self.waiting_on = None
        self._flush()

    def _result(self, future: asyncio.Future[bytes]) -> bytes:
        if future.cancelled():
            return _SHUTTING_DOWN
        error = future.exception()
        if error is None:
            return future.result()
        log.error("unexpected error in a command", exc_info=error)
        return encode_error("internal error (logged by the node)")

    def _wake_drain_waiters(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- pacing and idling ------------------------------------------------------------

    def _pause(self, reason: str) -> None:
        transport = self.transport
        if not self.paused and transport is not None and not transport.is_closing():
            transport.pause_reading()
        if reason not in self.paused:
            self.server.stats[f"paused_{reason}"] += 1
        self.paused.add(reason)

    def _resume(self, reason: str) -> None:
        self.paused.discard(reason)
        transport = self.transport
        if not self.paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _on_idle(self) -> None:
        timeout = self.config.idle_timeout_s
        idle_s = self.loop.time() - self.last_active
        if idle_s >= timeout and not self.replies:
            self.server.stats["idle_closed"] += 1
            if self.transport is not None:
                self.transport.close()
            return
        wait_s = timeout - idle_s if idle_s < timeout else timeout
        self.idle_timer = self.loop.call_later(wait_s, self._on_idle)
