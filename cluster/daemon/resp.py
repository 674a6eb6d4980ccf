"""The RESP front-end of a node: any Redis client can check limits (RESP2, or RESP3 via HELLO).

Theory of operation. One :class:`asyncio.Protocol` per connection feeds the
bytes it reads to a hiredis ``Reader`` and runs every complete command in
the read at once (pipelining); replies go out in command order, each as soon
as it and every reply before it are ready. Checks the node decides itself
complete synchronously (the check coroutine is stepped eagerly, see
:func:`start_eagerly`), so a pipelined burst of owner-local checks is
answered with one write; a forwarded check's reply waits for the owner
without holding back the parsing of later commands.

Commands (names are case-insensitive):

- ``PING [message]``: ``+PONG``, or the message as a bulk string.
- ``ML.CHECK client [cost]``: a check of ``client`` (cost 1 by default),
  answered with ``[allowed, limit, remaining, reset_after_ms, retry_after_ms,
  path]``: ``allowed`` 1 or 0; ``reset_after_ms`` and ``retry_after_ms``
  whole milliseconds rounded up (never early); ``retry_after_ms`` is 0 when
  allowed and -1 when the cost can never fit, as in the HTTP API; ``path`` a
  bulk string, ``owner``, ``forwarded``, ``local`` or ``degraded``.
- ``CL.THROTTLE key max_burst count_per_period period [quantity]``:
  redis-cell's command and reply, ``[limited, limit, remaining, retry_after,
  reset_after]`` (seconds, -1 when no retry applies); cluster-wide, see below.
- ``QUIT``: ``+OK``, then the connection closes.
- ``HELLO [2|3] [SETNAME name]``: the server's description (a map under 3,
  a flat array under 2). Every reply this server sends is the same in RESP2
  and RESP3 (integers, arrays, bulk and simple strings, errors: no maps,
  nulls or doubles), so both are accepted; redis-py 8 and go-redis open
  with ``HELLO 3``. ``AUTH`` is refused: the front-end has no users.
- ``CLIENT SETNAME name``, ``CLIENT SETINFO attr value``: ``+OK``, ignored
  (clients send them on connecting).

CL.THROTTLE and the cluster. The key is checked as client ``cl.throttle:KEY``
(at most 244 UTF-8 bytes) under the token-bucket rule
:func:`~meshlimit.cluster.throttle.throttle_rule` derives from the arguments,
which this node writes to the rule registry when the key's rule differs
(once per key and arguments; ``stats["throttle_rule_writes"]``). So the
limit is cluster-wide: the TAT lives on the key's owner like any counter,
forwarded, replicated and handed over, and an operator sees the rule at
``/v1/rules/cl.throttle:KEY``. ``throttle.py`` has the arithmetic, exact
for intervals of whole milliseconds. What this design costs:

- Every key is a client rule, held by every node and spread by gossip: right
  for thousands to about a hundred thousand keys. New keys are refused once
  the registry holds ``throttle_registry_share`` entries, so that they never
  crowd out operators' rules; a check message carrying its own rule would
  lift this.
- A new key's first check on a node that is not its owner can reach the
  owner before the rule does; the owner then decides under its old rule,
  seen as another ``limit``: retried once after ``rule_spread_wait_s``, then
  ``-TRYAGAIN``. An old rule with the same limit cannot be told apart, so
  one decision may use it.
- Callers of one key should pass the same arguments (as with redis-cell):
  others rewrite the rule, last writer wins, and a rule of another interval
  keeps its own TAT.
- A degraded node decides every rule, this one too, as a fixed-window local
  quota; a forwarded reply carries whole milliseconds (truncated), so a
  reply's seconds can differ from redis-cell's at an exact boundary.

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

hiredis' ``maxbuf`` only sets when the reader frees an idle buffer; it is no
bound. The frame bound is kept here: the bytes fed minus the exact encoded
size of each command parsed (hiredis refuses non-canonical lengths, so the
size of a parsed command is known) are the bytes of the one incomplete frame.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import hiredis
from meshlimit.cluster.daemon.throttle import (
    check_params,
    reply_from_decision,
    seconds_to_ns,
    throttle_rule,
)
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.decision import Decision
from meshlimit.core.registry import CLIENT_PREFIX, MAX_CLIENT_BYTES
from meshlimit.core.rules import MAX_COUNT, NS_PER_MS, Rule

log = logging.getLogger("meshlimit.resp")

#: CL.THROTTLE keys are checked as these clients, apart from ML.CHECK's own ids.
THROTTLE_PREFIX = "cl.throttle:"
MAX_KEY_BYTES = MAX_CLIENT_BYTES - len(THROTTLE_PREFIX)
#: redis-cell parses its numbers as i64.
_I64_MAX = 2**63 - 1
_INTEGER = re.compile(rb"[+-]?[0-9]{1,19}")
_NEED_MORE = object()  # hiredis' "no complete reply yet": False would be RESP3's #f
try:
    _VERSION = importlib.metadata.version("meshlimit").encode()
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare tree
    _VERSION = b"0"

Reply = bytes | asyncio.Future[bytes]


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
    """New CL.THROTTLE keys are refused while the rule registry holds this many entries (rules
    of every kind, cluster-wide). Why 500,000: half the registry's million, so that clients
    inventing keys can never crowd out the operators' rules."""
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


class CommandError(ValueError):
    """A client's mistake in one command: answered with ``-CODE message``, the connection lives."""

    def __init__(self, message: str, code: str = "ERR") -> None:
        super().__init__(message)
        self.code = code


# --- encoding replies -----------------------------------------------------------------


def encode_error(message: str, code: str = "ERR") -> bytes:
    """``-CODE message``; line breaks in the message are flattened (they would end the reply)."""
    text = f"{code} {message}".replace("\r", " ").replace("\n", " ")
    return b"-" + text.encode("utf-8", "backslashreplace") + b"\r\n"


def encode_bulk(data: bytes) -> bytes:
    """A bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def encode_integers(values: list[int]) -> bytes:
    """An array of integers."""
    return b"*%d\r\n" % len(values) + b"".join(b":%d\r\n" % v for v in values)


def check_reply(decision: Decision) -> bytes:
    """``ML.CHECK``'s reply: ``[allowed, limit, remaining, reset_after_ms, retry_after_ms, path]``."""
    if decision.allowed:
        retry_ms = 0
    elif math.isinf(decision.retry_after):
        retry_ms = -1
    else:
        retry_ms = _ceil_ms(decision.retry_after)
    path = decision.path.encode()
    return _CHECK_REPLY % (
        decision.allowed,
        decision.limit,
        decision.remaining,
        _ceil_ms(decision.reset_after),
        retry_ms,
        len(path),
        path,
    )


_CHECK_REPLY = b"*6\r\n:%d\r\n:%d\r\n:%d\r\n:%d\r\n:%d\r\n$%d\r\n%b\r\n"


def _ceil_ms(seconds: float) -> int:
    return -(-seconds_to_ns(seconds) // NS_PER_MS)


def command_size(frame: object) -> int | None:
    """The encoded size of a command, an array of bulk strings; None for anything else."""
    if type(frame) is not list:
        return None
    size = len(b"*%d\r\n" % len(frame))
    for arg in frame:
        if type(arg) is not bytes:
            return None
        size += len(b"$%d\r\n" % len(arg)) + len(arg) + 2
    return size


def show(raw: bytes, limit: int = 40) -> str:
    """An argument as it may appear inside an error: short, printable, one line."""
    text = raw[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + ("..." if len(raw) > limit else "")


# --- running coroutines eagerly -------------------------------------------------------


def start_eagerly(coro: Coroutine[Any, Any, bytes]) -> Reply:
    """Run ``coro`` up to its first suspension: its result if it finished, else a task.

    What Python 3.12's eager task factory does, for one coroutine: a check the
    node decides at once costs no task and no loop iteration. The task, when
    needed, resumes the very coroutine at the future it is waiting on.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    return asyncio.ensure_future(_resume(coro, waiting_on))


async def _resume(coro: Coroutine[Any, Any, bytes], waiting_on: Any) -> bytes:
    return await _Resumed(coro, waiting_on)


class _Resumed:
    """An awaitable that continues a coroutine suspended on ``waiting_on`` (``yield from``
    entered half-way): futures go up to the task unchanged, results and throws go down."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, bytes], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, bytes]:
        waiting_on = self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as error:  # the task was cancelled: pass it down
                try:
                    waiting_on = self.coro.throw(error)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    waiting_on = self.coro.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


# --- the server -----------------------------------------------------------------------


class RespServer:
    """Serves RESP on a TCP address over a started :class:`Runtime`."""

    def __init__(self, runtime: Runtime, config: RespConfig | None = None) -> None:
        self.runtime = runtime
        self.config = config or RespConfig()
        #: Connections, commands and refusals by kind (``protocol_errors``, ``oversized``...).
        self.stats: Counter[str] = Counter()
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._commands: dict[bytes, tuple[Callable[[list[bytes]], Reply], int, int]] = {
            b"PING": (self._ping, 1, 2),
            b"ML.CHECK": (self._ml_check, 2, 3),
            b"CL.THROTTLE": (self._cl_throttle, 5, 6),
            b"CLIENT": (self._client, 2, 4),
            b"HELLO": (self._hello, 1, 6),
        }
        self._next_id = 0

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

    # --- commands ---------------------------------------------------------------------

    def execute(self, args: list[bytes]) -> Reply:
        """Run one command: its reply now, or a future of it. Never raises."""
        self.stats["commands"] += 1
        try:
            spec = self._commands.get(args[0].upper())
            if spec is None:
                raise CommandError(f"unknown command '{show(args[0])}'")
            handler, fewest, most = spec
            if not fewest <= len(args) <= most:
                name = args[0].decode("ascii").lower()
                raise CommandError(f"wrong number of arguments for '{name}' command")
            return handler(args)
        except CommandError as error:
            self.stats["command_errors"] += 1
            return encode_error(str(error), error.code)
        except Exception:
            log.exception("unexpected error command=%s", show(args[0]))
            return encode_error("internal error (logged by the node)")

    def _hello(self, args: list[bytes]) -> Reply:
        """``HELLO [protover [AUTH user pass] [SETNAME name]]``: the server's description."""
        version = 2 if len(args) == 1 else _int_arg(args[1], "protocol version", 0, 2**31)
        if version not in (2, 3):
            raise CommandError("sorry, this protocol version is not supported", "NOPROTO")
        options = [a.upper() for a in args[2:]]
        if b"AUTH" in options:
            raise CommandError("AUTH is not supported: this front-end has no users")
        if len(args) not in (1, 2, 4) or (options and options[0] != b"SETNAME"):
            raise CommandError("syntax error: HELLO [2|3] [SETNAME name]")
        self._next_id += 1
        fields = [
            (b"server", encode_bulk(b"meshlimit")),
            (b"version", encode_bulk(_VERSION)),
            (b"proto", b":%d\r\n" % version),
            (b"id", b":%d\r\n" % self._next_id),
            (b"mode", encode_bulk(b"standalone")),
            (b"role", encode_bulk(b"master")),
            (b"modules", b"*0\r\n"),
        ]
        head = b"%%%d\r\n" % len(fields) if version == 3 else b"*%d\r\n" % (2 * len(fields))
        return head + b"".join(encode_bulk(name) + value for name, value in fields)

    def _client(self, args: list[bytes]) -> Reply:
        sub = args[1].upper()
        if (sub, len(args)) in ((b"SETNAME", 3), (b"SETINFO", 4)):
            return b"+OK\r\n"  # accepted and ignored: nothing here shows client names
        raise CommandError(f"unknown subcommand or wrong arguments for 'client|{show(args[1])}'")

    def _ping(self, args: list[bytes]) -> Reply:
        return b"+PONG\r\n" if len(args) == 1 else encode_bulk(args[1])

    def _ml_check(self, args: list[bytes]) -> Reply:
        client = _text_arg(args[1], "client id", MAX_CLIENT_BYTES)
        cost = _int_arg(args[2], "cost", 0, MAX_COUNT) if len(args) == 3 else 1
        return start_eagerly(self._check(client, cost))

    async def _check(self, client: str, cost: int) -> bytes:
        try:
            decision = await self.runtime.check(client, cost)
        except ValueError as error:  # validated above; the node has the last word
            return encode_error(str(error))
        return check_reply(decision)

    def _cl_throttle(self, args: list[bytes]) -> Reply:
        key = _text_arg(args[1], "key", MAX_KEY_BYTES)
        max_burst = _int_arg(args[2], "max_burst", -_I64_MAX, _I64_MAX)
        count = _int_arg(args[3], "count per period", -_I64_MAX, _I64_MAX)
        period_s = _int_arg(args[4], "period", -_I64_MAX, _I64_MAX)
        quantity = _int_arg(args[5], "quantity", -_I64_MAX, _I64_MAX) if len(args) == 6 else 1
        try:
            check_params(max_burst, count, period_s, quantity)
            rule = throttle_rule(max_burst, count, period_s)
        except ValueError as error:
            raise CommandError(f"CL.THROTTLE {error}") from None
        client = THROTTLE_PREFIX + key
        self._ensure_rule(client, rule)
        return start_eagerly(self._throttle(client, rule, quantity, max_burst))

    def _ensure_rule(self, client: str, rule: Rule) -> None:
        """Write ``client``'s rule to the registry unless it is there already."""
        registry = self.runtime.node.engine.registry
        current = registry.client_value(client)
        if current == rule:
            return
        if current is None and registry.entry_count() >= self.config.throttle_registry_share:
            self.stats["throttle_keys_refused"] += 1
            raise CommandError(
                f"CL.THROTTLE refuses new keys: the rule registry holds "
                f"{registry.entry_count()} entries (bound {self.config.throttle_registry_share})"
            )
        try:
            self.runtime.set_rule(CLIENT_PREFIX + client, rule)
        except ValueError as error:  # e.g. the registry is full
            raise CommandError(f"CL.THROTTLE cannot set the key's rule: {error}") from None
        self.stats["throttle_rule_writes"] += 1

    async def _throttle(self, client: str, rule: Rule, quantity: int, max_burst: int) -> bytes:
        try:
            decision = await self.runtime.check(client, quantity)
            if decision.limit != rule.limit:
                # The owner decided under another rule: ours has not reached it yet.
                self.stats["throttle_rule_mismatch"] += 1
                await asyncio.sleep(self.config.rule_spread_wait_s)
                decision = await self.runtime.check(client, quantity)
                if decision.limit != rule.limit:
                    self.stats["throttle_tryagain"] += 1
                    return encode_error(
                        "the key's rule is still spreading to its owner; retry", "TRYAGAIN"
                    )
        except ValueError as error:
            return encode_error(str(error))
        return encode_integers(reply_from_decision(decision, max_burst))


def _int_arg(raw: bytes, what: str, low: int, high: int) -> int:
    if not _INTEGER.fullmatch(raw):
        raise CommandError(f"{what} must be an integer, got '{show(raw)}'")
    value = int(raw)
    if not low <= value <= high:
        raise CommandError(f"{what} must be an integer from {low} to {high}, got {value}")
    return value


def _text_arg(raw: bytes, what: str, max_bytes: int) -> str:
    if not raw:
        raise CommandError(f"{what} must not be empty")
    if len(raw) > max_bytes:
        raise CommandError(f"{what} is {len(raw)} bytes long; the limit is {max_bytes}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{what} '{show(raw)}' is not UTF-8 text") from None


# --- connections ----------------------------------------------------------------------

_MAX_CLIENTS = encode_error("max number of clients reached")
_SHUTTING_DOWN = encode_error("the node is shutting down")


class _Connection(asyncio.Protocol):
    """One client: parse, run, reply in order; bounded, paced, reaped when idle."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.config = server.config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(notEnoughData=_NEED_MORE)
        self.partial_bytes = 0  # bytes fed that no complete command has accounted for yet
        self.replies: deque[Reply] = deque()
        self.waiting_on: asyncio.Future[bytes] | None = None
        self.paused: set[str] = set()
        self.reading = True  # False once a protocol error, QUIT or shutdown ends the input
        self.close_when_drained = False
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.drain_waiters: list[asyncio.Future[None]] = []

    # --- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        stats = self.server.stats
        if len(self.server._connections) >= self.config.max_connections:
            stats["connections_refused"] += 1
            self.reading = False
            transport.write(_MAX_CLIENTS)
            transport.close()
            return
        stats["connections"] += 1
        self.server._connections.add(self)
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(self.config.idle_timeout_s, self._on_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.reading = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.replies.clear()  # nobody to answer; tasks still running finish on their own
        self._wake_drain_waiters()

    def data_received(self, data: bytes) -> None:
        if not self.reading:
            return
        self.last_active = self.loop.time()
        self.reader.feed(data)
        self.partial_bytes += len(data)
        self._run_commands()
        self._flush()
        if len(self.replies) >= self.config.max_pipeline:
            self._pause("pipeline")

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
            if self.replies:
                self.transport.write(_SHUTTING_DOWN)
            self.transport.close()

    # --- parsing and running ----------------------------------------------------------

    def _run_commands(self) -> None:
        config = self.config
        while self.reading:
            try:
                frame = self.reader.gets()
            except (hiredis.HiredisError, TypeError, ValueError, MemoryError) as error:
                # TypeError: a RESP3 map whose key is an array (found by the fuzz
                # campaign); MemoryError: an absurd declared size. Both are garbage.
                text = str(error)  # hiredis' own messages start "Protocol error"
                self._protocol_error(
                    text if text.startswith("Protocol error") else f"Protocol error: {text}"
                )
                return
            if frame is _NEED_MORE:
                if self.partial_bytes > config.max_frame_bytes:
                    self._oversized()
                return
            size = command_size(frame)
            if size is None:
                self._protocol_error("Protocol error: expected an array of bulk strings")
                return
            self.partial_bytes -= size
            if size > config.max_frame_bytes:
                self._oversized()
                return
            if not frame:
                continue  # an empty array is no command (Redis skips it too)
            if len(frame) > config.max_args:
                self.server.stats["command_errors"] += 1
                self.replies.append(
                    encode_error(f"too many arguments ({len(frame)}; at most {config.max_args})")
                )
            elif frame[0].upper() == b"QUIT":
                self.replies.append(b"+OK\r\n")
                self.reading = False
                self.close_when_drained = True
            else:
                self.replies.append(self.server.execute(frame))

    def _oversized(self) -> None:
        self.server.stats["oversized"] += 1
        limit = self.config.max_frame_bytes
        self._protocol_error(f"Protocol error: command larger than {limit} bytes")

    def _protocol_error(self, message: str) -> None:
        """Answer what was read before, then the error, then close (as Redis does)."""
        self.server.stats["protocol_errors"] += 1
        self.replies.append(encode_error(message))
        self.reading = False
        self.close_when_drained = True
        self._pause("closing")

    # --- replying ---------------------------------------------------------------------

    def _flush(self) -> None:
        """Write every reply that is ready and has no unready reply before it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        out: list[bytes] = []
        replies = self.replies
        while replies:
            head = replies[0]
            if type(head) is bytes:
                out.append(head)
            elif head.done():  # type: ignore[union-attr]
                out.append(self._result(head))  # type: ignore[arg-type]
            else:
                if self.waiting_on is not head:
                    self.waiting_on = head  # type: ignore[assignment]
                    head.add_done_callback(self._on_reply_ready)  # type: ignore[union-attr]
                break
            replies.popleft()
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if not replies:
            self._wake_drain_waiters()
            if self.close_when_drained:
                transport.close()
                return
        if "pipeline" in self.paused and len(replies) <= self.config.max_pipeline // 2:
            self._resume("pipeline")

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
