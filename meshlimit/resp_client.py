"""What the daemon clients share, sync and async alike: addresses, back-off, commands, replies.

:mod:`meshlimit.client` has the two clients; this module has the parts with no IO of
their own, so both speak one protocol the same way:

- :func:`parse_addresses`: ``"HOST:PORT"`` or a list of them (``[::1]:6380`` for IPv6).
- :class:`Addresses`: which address a key goes to first (a stable hash of the key, so
  load spreads over the daemons and one key keeps one daemon), the order of fail-over
  (the others, in turn), and the back-off of addresses found dead: one that failed is
  skipped for ``dead_for_ms``, then tried again by the next call. While every address
  is backing off, a call fails at once instead of waiting on dead daemons.
- :func:`encode_command` and :func:`decision_from_reply`: ``ML.CHECK key cost
  WITHWINDOW`` and its seven-element reply (``cluster/daemon/resp_commands.py``).
- :func:`fallback_decision`: the answer of the ``on_error`` policy when no daemon
  answered: ``allow`` and ``deny``, each saying it is no limiter's (``path`` ``fallback``).
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Sequence

from meshlimit.core.decision import FALLBACK, NS_PER_S, Decision
from meshlimit.core.rules import NS_PER_MS

#: The policies for a daemon that cannot be reached (``raise``: :class:`DaemonUnavailable`).
ON_ERROR = ("allow", "deny", "raise")
#: Spellings of the policies kept from the ASGI middleware's first version.
ON_ERROR_ALIASES = {"open": "allow", "closed": "deny"}
#: Replies larger than this are no reply of the daemon's: the connection is dropped.
MAX_REPLY_BYTES = 64 * 1024


class DaemonUnavailable(ConnectionError):
    """No daemon answered in time (refused, reset, timed out, or every address backing off)."""


def check_on_error(on_error: str) -> str:
    """The policy's one spelling (``allow``, ``deny``, ``raise``); ``ValueError`` otherwise."""
    if not isinstance(on_error, str):
        raise TypeError(f"on_error must be a str, got {on_error!r}")
    policy = ON_ERROR_ALIASES.get(on_error, on_error)
    if policy not in ON_ERROR:
        raise ValueError(
            f"on_error must be 'allow', 'deny' or 'raise' ('open' and 'closed' are aliases "
            f"of the first two), not {on_error!r}"
        )
    return policy


def check_positive_ms(value: object, what: str) -> int:
    """A duration in whole milliseconds, at least 1."""
    if type(value) is not int:
        raise TypeError(f"{what} must be an int (milliseconds), got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1 ms, got {value}")
    return value


def parse_addresses(addresses: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"HOST:PORT"`` or several as ``(host, port)``; ``TypeError``/``ValueError`` naming
    what is wrong."""
    items = [addresses] if isinstance(addresses, str) else addresses
    if not isinstance(items, Sequence) or not items:
        raise TypeError(f"addresses must be 'HOST:PORT' or a list of them, got {addresses!r}")
    parsed = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"address {item!r} is not a str 'HOST:PORT'")
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"address {item!r} is not HOST:PORT")
        parsed.append((host.strip("[]"), int(port)))
    return parsed


class Addresses:
    """The daemons' addresses: first choice per key, fail-over order, back-off when dead.

    Thread-safe; the async client uses it from one loop, where the lock is never
    contended."""

    def __init__(self, addresses: list[tuple[str, int]], dead_for_ms: int) -> None:
        self.all = addresses
        self.dead_for_ns = dead_for_ms * 1_000_000
        self._dead_until: dict[int, int] = {}  # index -> monotonic ns
        self._lock = threading.Lock()

    def order(self, key: str) -> list[int]:
        """Indexes to try for ``key``: its own first, then the others in turn; those
        backing off are left out (all of them: an empty list, fail at once)."""
        count = len(self.all)
        first = zlib.crc32(key.encode("utf-8", "surrogatepass")) % count if count > 1 else 0
        turn = [(first + step) % count for step in range(count)]
        if not self._dead_until:
            return turn
        now = time.monotonic_ns()
        with self._lock:
            return [i for i in turn if self._dead_until.get(i, 0) <= now]

    def failed(self, index: int) -> None:
        """``index`` did not answer: skip it for a while."""
        with self._lock:
            self._dead_until[index] = time.monotonic_ns() + self.dead_for_ns

    def answered(self, index: int) -> None:
        """``index`` answered: it is alive."""
        if index in self._dead_until:
            with self._lock:
                self._dead_until.pop(index, None)

    def retry_in_s(self) -> float:
        """Seconds until the first address backing off may be tried again (0: none is)."""
        with self._lock:
            soonest = min(self._dead_until.values(), default=0)
        return max(0.0, (soonest - time.monotonic_ns()) / NS_PER_S)

    def name(self, index: int) -> str:
        host, port = self.all[index]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def encode_command(*args: str | int) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [str(a).encode("utf-8", "surrogatepass") for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


def decision_from_reply(reply: object) -> Decision:
    """``ML.CHECK ... WITHWINDOW``'s reply as a :class:`Decision`; ``ValueError`` if it is
    not one (a daemon too old for ``WITHWINDOW`` answers six elements: window unknown)."""
    if not isinstance(reply, list) or len(reply) not in (6, 7):
        raise ValueError(f"ML.CHECK answered {reply!r}, not a decision")
    allowed, limit, remaining, reset_ms, retry_ms, path = reply[:6]
    window_ms = reply[6] if len(reply) == 7 else 0
    numbers = (allowed, limit, remaining, reset_ms, retry_ms, window_ms)
    if not all(type(n) is int for n in numbers) or not isinstance(path, bytes):
        raise ValueError(f"ML.CHECK answered {reply!r}, not a decision")
    retry = math.inf if retry_ms < 0 else retry_ms / 1000
    return Decision(
        bool(allowed),
        limit,
        remaining,
        reset_ms / 1000,
        retry,
        path.decode("ascii", "replace"),
        False,
        window_ms * NS_PER_MS,
    )


def fallback_decision(policy: str, retry_after_s: float) -> Decision:
    """The ``on_error`` policy's answer: ``allow`` lets the request through, ``deny``
    refuses it until the daemons may be tried again. Limit, remaining and window are 0:
    unknown, as nobody counted (integrations send no RateLimit headers for it)."""
    if policy == "allow":
        return Decision(True, 0, 0, 0.0, 0.0, FALLBACK)
    return Decision(False, 0, 0, 0.0, max(retry_after_s, 0.001), FALLBACK)
