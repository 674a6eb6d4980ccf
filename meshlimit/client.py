"""Clients of a meshlimit daemon over RESP: one count shared by every process that asks.

```python
from meshlimit.client import Client

limits = Client(["10.0.0.1:6380", "10.0.0.2:6380"], timeout_ms=250, on_error="allow")
decision = limits.check("acme")          # from any thread
limits.set_rule("acme", "10/second;1000/hour")
```

:class:`Client` is for threaded code (WSGI, Flask, Django, gunicorn workers): it blocks
the calling thread for one round trip. :class:`AsyncClient` is the same for asyncio.
Both speak RESP to the ``--resp`` port of ``meshlimit node`` (``ML.CHECK``, ``ML.RULE``,
``ML.RESET``; ``cluster/daemon/resp_commands.py``), any node of the cluster: the node
forwards to the key's owner.

Theory of operation. Each address has a pool of at most ``pool_size`` connections,
opened on demand and kept for reuse; a call takes one (waiting while all are busy), sends
one command, reads one reply, and gives it back. A key goes first to the address its hash
picks, so load spreads over the daemons; when that address refuses, resets or does not
answer, the call goes on to the next (fail-over), and the dead address is skipped for
``dead_for_ms`` (the back-off): while every address backs off, calls fail at once rather
than each waiting on a dead daemon. A pooled connection the daemon has closed (an idle
timeout, a restart) is replaced once before its address counts as dead. Every call is
bounded by ``timeout_ms`` in all, connecting and fail-over included; a connection whose
reply did not come in time is closed, never reused.

When no daemon answers, ``on_error`` decides: ``allow`` (the default) lets the request
through, ``deny`` refuses it (``retry_after``: until an address may be tried again), each
as a :class:`~meshlimit.core.decision.Decision` whose ``path`` is ``fallback``
(``decision.fallback`` is True: no limiter counted it); ``raise`` raises
:class:`DaemonUnavailable`. The policy covers checks only: ``set_rule``, ``get_rule``,
``remove_rule`` and ``reset`` always raise :class:`DaemonUnavailable`, since a rule change
that silently did not happen would be worse. An error the daemon answers (a bad rule, a
bad key) is a ``ValueError`` whatever the policy; a wrong type a ``TypeError``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from meshlimit.core.decision import Decision
from meshlimit.core.engine import check_cost
from meshlimit.core.registry import check_client_id
from meshlimit.core.rules import Rule, as_rule, parse_rule
from meshlimit.resp_client import (
    MAX_REPLY_BYTES,
    Addresses,
    DaemonUnavailable,
    check_on_error,
    check_positive_ms,
    decision_from_reply,
    encode_command,
    fallback_decision,
    parse_addresses,
)

try:
    import hiredis
except ImportError as error:  # pragma: no cover - hiredis is in the client's extras
    raise ImportError("meshlimit.client needs hiredis: pip install 'meshlimit[client]'") from error

__all__ = ["AsyncClient", "Client", "DaemonUnavailable"]

#: Why 250 ms: a check is well under a millisecond on a LAN, and a forwarded one whose
#: owner is gone is decided degraded by the node within its forward timeout (200 ms).
TIMEOUT_MS = 250
#: Why 1 s: a restarted daemon is back in seconds; meanwhile a call pays no timeout.
DEAD_FOR_MS = 1000
#: Why 8: connections per daemon for one process's threads; more threads wait their turn.
POOL_SIZE = 8

_IO_ERRORS = (OSError, EOFError, hiredis.ProtocolError, ValueError)


class _PoolBusy(Exception):
    """Every connection to an address stayed busy until the deadline: the address is not
    dead, the process asks more than ``pool_size`` at once."""


class _Options:
    """The constructor's arguments, checked once for both clients."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        timeout_ms: int,
        on_error: str,
        pool_size: int,
        dead_for_ms: int,
    ) -> None:
        self.addresses = Addresses(
            parse_addresses(addresses), check_positive_ms(dead_for_ms, "dead_for_ms")
        )
        self.timeout_s = check_positive_ms(timeout_ms, "timeout_ms") / 1000
        self.on_error = check_on_error(on_error)
        if type(pool_size) is not int:
            raise TypeError(f"pool_size must be an int, got {pool_size!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.pool_size = pool_size


#: Error replies that say the node cannot serve now, not that the command was wrong: the
#: address counts as unavailable (fail over), as if it had not answered.
_UNAVAILABLE = ("the node is shutting down", "max number of clients reached")


def _answer(reply: object) -> object:
    """A reply as read; an error reply saying the node cannot serve raises ``EOFError``."""
    if isinstance(reply, hiredis.ReplyError) and any(t in str(reply) for t in _UNAVAILABLE):
        raise EOFError(f"the daemon answered: {reply}")
    return reply


def _reply_error(reply: object) -> object:
    """The daemon's error reply as a ``ValueError`` to raise; other replies pass."""
    if isinstance(reply, hiredis.ReplyError):
        return ValueError(f"the daemon refused the command: {reply}")
    return reply


def _rule_text(rule: Rule | str) -> str:
    if isinstance(rule, str) and rule.startswith("@"):
        return rule
    return str(as_rule(rule))


# --- the threaded client --------------------------------------------------------------


class _Connection:
    """One socket with its reply parser."""

    def __init__(self, address: tuple[str, int], timeout_s: float) -> None:
        self.sock = socket.create_connection(address, timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.reused = False

    def request(self, command: bytes, deadline: float) -> object:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self.sock.sendall(command)
        received = 0
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return _answer(reply)
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.sock.recv(16384)
            if not data:
                raise EOFError("the daemon closed the connection")
            received += len(data)
            if received > MAX_REPLY_BYTES:
                raise ValueError("reply too large")
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


class _Pool:
    """At most ``size`` connections to one address; idle ones are reused, newest first."""

    def __init__(self, address: tuple[str, int], size: int) -> None:
        self.address = address
        self.size = size
        self._idle: list[_Connection] = []
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self.closed = False

    def take(self, deadline: float) -> _Connection:
        if not self._free.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise _PoolBusy(f"all {self.size} connections stayed busy")
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is not None:
            connection.reused = True
            return connection
        try:
            return _Connection(self.address, max(deadline - time.monotonic(), 0.001))
        except BaseException:
            self._free.release()
            raise

    def give_back(self, connection: _Connection, healthy: bool) -> None:
        with self._lock:
            keep = healthy and not self.closed
            if keep:
                self._idle.append(connection)
        if not keep:
            connection.close()
        self._free.release()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class Client:
    """A thread-safe, pooled client of one or several daemons (see the module docstring).

    ``addresses``: ``"HOST:PORT"`` of a daemon's ``--resp`` or a list of them;
    ``timeout_ms`` bounds each call in all; ``on_error``: ``allow``, ``deny`` or
    ``raise``; ``pool_size`` connections at most per address; ``dead_for_ms`` the
    back-off of an address that failed. Use it as a context manager, or :meth:`close`.
    """

    #: A check waits on a socket: web integrations run it off an event loop.
    blocking = True

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        timeout_ms: int = TIMEOUT_MS,
        on_error: str = "allow",
        pool_size: int = POOL_SIZE,
        dead_for_ms: int = DEAD_FOR_MS,
    ) -> None:
        self._options = _Options(addresses, timeout_ms, on_error, pool_size, dead_for_ms)
        self._pools = [_Pool(a, pool_size) for a in self._options.addresses.all]
        self._closed = False

    @property
    def on_error(self) -> str:
        """The policy for an unreachable daemon: ``allow``, ``deny`` or ``raise``."""
        return self._options.on_error

    def check(self, key: str, cost: int = 1) -> Decision:
        """Count ``cost`` against ``key`` if it fits, cluster-wide; ``cost=0`` only looks."""
        check_client_id(key)
        if type(cost) is not int or cost < 0:
            check_cost(cost)
        command = encode_command("ML.CHECK", key, cost, "WITHWINDOW")
        try:
            return decision_from_reply(self._call(key, command))
        except DaemonUnavailable:
            if self._options.on_error == "raise":
                raise
            retry_s = self._options.addresses.retry_in_s()
            return fallback_decision(self._options.on_error, retry_s)

    def set_rule(self, key: str, rule: Rule | str) -> None:
        """Give ``key`` its own rule (``"10/second;1000/hour"``) or a tier (``"@gold"``,
        one the daemon knows), spread to the whole cluster."""
        check_client_id(key)
        self._call(key, encode_command("ML.RULE", "SET", key, _rule_text(rule)))

    def get_rule(self, key: str) -> Rule:
        """The rule in force for ``key`` (its own, its tier's or the default)."""
        check_client_id(key)
        reply = self._call(key, encode_command("ML.RULE", "GET", key))
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
            raise DaemonUnavailable(f"ML.RULE GET answered {reply!r}")
        return parse_rule(reply[0].decode())

    def remove_rule(self, key: str) -> bool:
        """Drop ``key``'s own rule (the default applies again); True if it had one."""
        check_client_id(key)
        return bool(self._call(key, encode_command("ML.RULE", "DEL", key)))

    def reset(self, key: str) -> None:
        """Forget ``key``'s counts cluster-wide."""
        check_client_id(key)
        self._call(key, encode_command("ML.RESET", key))

    def close(self) -> None:
        """Close every idle connection; busy ones close when their call ends. Calls made
        after this raise ``RuntimeError``."""
        self._closed = True
        for pool in self._pools:
            pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(map(self._options.addresses.name, range(len(self._pools))))
        return f"<Client {names} on_error={self.on_error}{' closed' if self._closed else ''}>"

    def _call(self, key: str, command: bytes) -> object:
        """Send ``command`` to ``key``'s address, failing over; its reply, the daemon's
        error as ``ValueError``, or :class:`DaemonUnavailable`."""
        if self._closed:
            raise RuntimeError("this Client is closed")
        addresses = self._options.addresses
        deadline = time.monotonic() + self._options.timeout_s
        last: BaseException | None = None
        for index in addresses.order(key):
            if time.monotonic() >= deadline:
                break
            try:
                reply = self._request(self._pools[index], command, deadline)
            except _PoolBusy as error:
                last = error
                continue
            except _IO_ERRORS as error:
                addresses.failed(index)
                last = error
                continue
            addresses.answered(index)
            result = _reply_error(reply)
            if isinstance(result, ValueError):
                raise result
            return result
        raise DaemonUnavailable(_unavailable(addresses, last))

    def _request(self, pool: _Pool, command: bytes, deadline: float) -> object:
        """One request on a pooled connection; a reused one that fails is replaced once."""
        for _ in range(2):
            connection = pool.take(deadline)
            try:
                reply = connection.request(command, deadline)
            except _IO_ERRORS:
                pool.give_back(connection, healthy=False)
                if connection.reused and time.monotonic() < deadline:
                    continue  # the daemon closed an idle connection: try a fresh one
                raise
            except BaseException:
                pool.give_back(connection, healthy=False)
                raise
            pool.give_back(connection, healthy=True)
            return reply
        raise EOFError("no connection answered")  # pragma: no cover - the loop returns


def _unavailable(addresses: Addresses, last: BaseException | None) -> str:
    names = ", ".join(map(addresses.name, range(len(addresses.all))))
    if last is None:
        return f"no meshlimit daemon reachable at {names} (all backing off)"
    return f"no meshlimit daemon reachable at {names}: {type(last).__name__}: {last}"


# --- the asyncio client ---------------------------------------------------------------


class _AsyncConnection:
    """One stream pair with its reply parser."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader()
        self.reused = False

    async def request(self, command: bytes) -> object:
        self.writer.write(command)
        received = 0
        while True:
            reply = self.parser.gets()
            if reply is not False:
                return _answer(reply)
            data = await self.reader.read(16384)
            if not data:
                raise EOFError("the daemon closed the connection")
            received += len(data)
            if received > MAX_REPLY_BYTES:
                raise ValueError("reply too large")
            self.parser.feed(data)

    def close(self) -> None:
        self.writer.close()


class _AsyncPool:
    """:class:`_Pool` for one event loop."""

    def __init__(self, address: tuple[str, int], size: int) -> None:
        self.address = address
        self.size = size
        self._idle: list[_AsyncConnection] = []
        self._free = asyncio.BoundedSemaphore(size)
        self.closed = False

    @property
    def busy(self) -> bool:
        """Every connection is taken."""
        return self._free.locked()

    async def take(self) -> _AsyncConnection:
        await self._free.acquire()
        if self._idle:
            connection = self._idle.pop()
            connection.reused = True
            return connection
        try:
            reader, writer = await asyncio.open_connection(*self.address)
        except BaseException:
            self._free.release()
            raise
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _AsyncConnection(reader, writer)

    def give_back(self, connection: _AsyncConnection, healthy: bool) -> None:
        if healthy and not self.closed:
            self._idle.append(connection)
        else:
            connection.close()
        self._free.release()

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class AsyncClient:
    """:class:`Client` for asyncio: the same arguments and methods, awaited. Use it from
    one event loop (its pools belong to the loop that first uses them)."""

    blocking = False

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        timeout_ms: int = TIMEOUT_MS,
        on_error: str = "allow",
        pool_size: int = POOL_SIZE,
        dead_for_ms: int = DEAD_FOR_MS,
    ) -> None:
        self._options = _Options(addresses, timeout_ms, on_error, pool_size, dead_for_ms)
        self._pools = [_AsyncPool(a, pool_size) for a in self._options.addresses.all]
        self._closed = False

    @property
    def on_error(self) -> str:
        """The policy for an unreachable daemon: ``allow``, ``deny`` or ``raise``."""
        return self._options.on_error

    async def check(self, key: str, cost: int = 1) -> Decision:
        """Count ``cost`` against ``key`` if it fits, cluster-wide; ``cost=0`` only looks."""
        check_client_id(key)
        if type(cost) is not int or cost < 0:
            check_cost(cost)
        command = encode_command("ML.CHECK", key, cost, "WITHWINDOW")
        try:
            return decision_from_reply(await self._call(key, command))
        except DaemonUnavailable:
            if self._options.on_error == "raise":
                raise
            retry_s = self._options.addresses.retry_in_s()
            return fallback_decision(self._options.on_error, retry_s)

    async def set_rule(self, key: str, rule: Rule | str) -> None:
        """:meth:`Client.set_rule`."""
        check_client_id(key)
        await self._call(key, encode_command("ML.RULE", "SET", key, _rule_text(rule)))

    async def get_rule(self, key: str) -> Rule:
        """:meth:`Client.get_rule`."""
        check_client_id(key)
        reply = await self._call(key, encode_command("ML.RULE", "GET", key))
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
            raise DaemonUnavailable(f"ML.RULE GET answered {reply!r}")
        return parse_rule(reply[0].decode())

    async def remove_rule(self, key: str) -> bool:
        """:meth:`Client.remove_rule`."""
        check_client_id(key)
        return bool(await self._call(key, encode_command("ML.RULE", "DEL", key)))

    async def reset(self, key: str) -> None:
        """:meth:`Client.reset`."""
        check_client_id(key)
        await self._call(key, encode_command("ML.RESET", key))

    async def close(self) -> None:
        """Close every idle connection; later calls raise ``RuntimeError``."""
        self._closed = True
        for pool in self._pools:
            pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, key: str, command: bytes) -> object:
        """:meth:`Client._call` on the loop."""
        if self._closed:
            raise RuntimeError("this AsyncClient is closed")
        addresses = self._options.addresses
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.timeout_s
        last: BaseException | None = None
        for index in addresses.order(key):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                reply = await self._request(self._pools[index], command, deadline)
            except _PoolBusy as error:
                last = error
                continue
            except _IO_ERRORS as error:
                addresses.failed(index)
                last = error
                continue
            addresses.answered(index)
            result = _reply_error(reply)
            if isinstance(result, ValueError):
                raise result
            return result
        raise DaemonUnavailable(_unavailable(addresses, last))

    async def _request(self, pool: _AsyncPool, command: bytes, deadline: float) -> object:
        """One request on a pooled connection, by ``deadline`` (the loop's clock); a reused
        connection that fails is replaced once."""
        loop = asyncio.get_running_loop()
        for _ in range(2):
            try:
                connection = await asyncio.wait_for(pool.take(), deadline - loop.time())
            except TimeoutError:
                if pool.busy:
                    raise _PoolBusy(f"all {pool.size} connections stayed busy") from None
                raise
            try:
                reply = await asyncio.wait_for(connection.request(command), deadline - loop.time())
            except _IO_ERRORS:  # the timeout too: the connection is closed, never reused
                pool.give_back(connection, healthy=False)
                if connection.reused and loop.time() < deadline:
                    continue
                raise
            except BaseException:  # cancelled (the timeout): its reply may still come
                pool.give_back(connection, healthy=False)
                raise
            pool.give_back(connection, healthy=True)
            return reply
        raise EOFError("no connection answered")  # pragma: no cover - the loop returns
