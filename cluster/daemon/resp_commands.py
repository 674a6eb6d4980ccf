"""The RESP front-end's commands: each one validated, run against the runtime, answered.

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
- ``QUIT``: ``+OK``, then the connection closes (handled by the connection, ``resp.py``).
- ``HELLO [2|3] [SETNAME name]``: the server's description (a map under 3,
  a flat array under 2). Every reply this server sends is the same in RESP2
  and RESP3 (integers, arrays, bulk and simple strings, errors: no maps,
  nulls or doubles), so both are accepted; redis-py 8 and go-redis open
  with ``HELLO 3``. ``AUTH`` is refused: the front-end has no users.
- ``CLIENT SETNAME name``, ``CLIENT SETINFO attr value``: ``+OK``, ignored
  (clients send them on connecting).

A check is stepped eagerly (:func:`~meshlimit.cluster.daemon.eager.start_eagerly`):
one the node decides itself is answered at once; a forwarded one is answered by
a future that the connection waits on, in command order.

CL.THROTTLE and the cluster. The key is checked as client ``cl.throttle:KEY``
(at most 244 UTF-8 bytes) under the token-bucket rule
:func:`~meshlimit.cluster.daemon.throttle.throttle_rule` derives from the
arguments, which this node writes to the rule registry as a per-call entry when the
key's entry is missing or holds another rule (``stats["throttle_rule_writes"]``),
and writes again once half its lifetime has passed (``throttle_rule_renewals``). So
the limit is cluster-wide: the TAT lives on the key's owner like any counter,
forwarded, replicated and handed over, and an operator sees the rule at
``/v1/rules/cl.throttle:KEY``. ``throttle.py`` has the arithmetic, exact
for intervals of whole milliseconds. What this design costs:

- Every key is a per-call entry held by every node (``core/registry.py``): soft
  state outside anti-entropy, gone ten minutes (or twice its bucket's refill time,
  if longer) after the last call, so keys no longer called cost nothing. A node
  keeps at most ``throttle_registry_share`` of them: past that the one closest to
  its expiry is evicted, so a flood of distinct keys never stops new keys (an
  evicted key in use is written again by its next call; its TAT is a counter and
  stays). A renewal is one rule write per key in use every five minutes.
- A new key's first check on a node that is not its owner can reach the
  owner before the rule does (or the owner may lack it: a lost datagram, an
  eviction, a restart); the owner then decides under another rule, seen as
  another ``limit``: the rule is sent again and the check retried once after
  ``rule_spread_wait_s``, then ``-TRYAGAIN``. An old rule with the same limit
  cannot be told apart, so one decision may use it.
- Callers of one key should pass the same arguments (as with redis-cell):
  others rewrite the rule, last writer wins, and a rule of another interval
  keeps its own TAT.
- A degraded node decides every rule, this one too, as a fixed-window local
  quota; a forwarded reply carries whole milliseconds (truncated), so a
  reply's seconds can differ from redis-cell's at an exact boundary.

Bad input. Unknown commands, wrong arity, non-integers and bad client ids are
answered with an ``-ERR`` naming the problem (:class:`CommandError`) and the
connection carries on. :meth:`RespCommands.execute` never raises: unexpected
errors are logged and answered ``-ERR internal error``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable

from meshlimit.cluster.daemon.eager import start_eagerly
from meshlimit.cluster.daemon.resp_protocol import (
    OK,
    encode_bulk,
    encode_error,
    encode_integers,
    show,
)
from meshlimit.cluster.daemon.throttle import (
    check_params,
    reply_from_decision,
    seconds_to_ns,
    throttle_rule,
)
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.decision import Decision
from meshlimit.core.registry import CLIENT_PREFIX, MAX_CLIENT_BYTES, PER_CALL_PREFIX
from meshlimit.core.rules import MAX_COUNT, NS_PER_MS, Rule

log = logging.getLogger("meshlimit.resp")

#: CL.THROTTLE keys are checked as these clients, apart from ML.CHECK's own ids; the
#: registry holds their rules as per-call entries.
THROTTLE_PREFIX = PER_CALL_PREFIX
MAX_KEY_BYTES = MAX_CLIENT_BYTES - len(THROTTLE_PREFIX)
#: redis-cell parses its numbers as i64.
_I64_MAX = 2**63 - 1
_INTEGER = re.compile(rb"[+-]?[0-9]{1,19}")
try:
    _VERSION = importlib.metadata.version("meshlimit").encode()
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare tree
    _VERSION = b"0"

#: A command's reply: its bytes now, or a future of them (a check waiting for its owner).
Reply = bytes | asyncio.Future[bytes]


class CommandError(ValueError):
    """A client's mistake in one command: answered with ``-CODE message``, the connection lives."""

    def __init__(self, message: str, code: str = "ERR") -> None:
        super().__init__(message)
        self.code = code


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


class RespCommands:
    """Runs commands against a started :class:`Runtime`, counting into ``stats``.

    ``throttle_registry_share`` and ``rule_spread_wait_s`` are CL.THROTTLE's bounds
    (see :class:`~meshlimit.cluster.daemon.resp.RespConfig`).
    """

    def __init__(
        self,
        runtime: Runtime,
        stats: Counter[str],
        *,
        throttle_registry_share: int,
        rule_spread_wait_s: float,
    ) -> None:
        self.runtime = runtime
        self.stats = stats
        self.throttle_registry_share = throttle_registry_share
        self.rule_spread_wait_s = rule_spread_wait_s
        self._commands: dict[bytes, tuple[Callable[[list[bytes]], Reply], int, int]] = {
            b"PING": (self._ping, 1, 2),
            b"ML.CHECK": (self._ml_check, 2, 3),
            b"CL.THROTTLE": (self._cl_throttle, 5, 6),
            b"CLIENT": (self._client, 2, 4),
            b"HELLO": (self._hello, 1, 6),
        }
        self._next_id = 0

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

    # --- the commands -----------------------------------------------------------------

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
            return OK  # accepted and ignored: nothing here shows client names
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
        """Write ``client``'s per-call rule unless the registry holds it, fresh enough."""
        registry = self.runtime.node.registry
        now_ms = time.time_ns() // NS_PER_MS
        if not registry.call_needs_write(client, rule, now_ms=now_ms):
            return
        renewal = registry.client_value(client) == rule
        registry.max_calls = self.throttle_registry_share  # the bound of what we write
        self._write_rule(client, rule)
        self.stats["throttle_rule_renewals" if renewal else "throttle_rule_writes"] += 1

    def _write_rule(self, client: str, rule: Rule) -> None:
        try:
            self.runtime.set_rule(CLIENT_PREFIX + client, rule)
        except ValueError as error:  # not expected: per-call entries evict, never refuse
            raise CommandError(f"CL.THROTTLE cannot set the key's rule: {error}") from None

    async def _throttle(self, client: str, rule: Rule, quantity: int, max_burst: int) -> bytes:
        try:
            decision = await self.runtime.check(client, quantity)
            if decision.limit != rule.limit:
                # The owner decided under another rule: ours has not reached it, or it
                # lost it. Send it again, give it time to arrive, and ask once more.
                self.stats["throttle_rule_mismatch"] += 1
                self._write_rule(client, rule)
                await asyncio.sleep(self.rule_spread_wait_s)
                decision = await self.runtime.check(client, quantity)
                if decision.limit != rule.limit:
                    self.stats["throttle_tryagain"] += 1
                    return encode_error(
                        "the key's rule is still spreading to its owner; retry", "TRYAGAIN"
                    )
        except ValueError as error:  # a CommandError from sending the rule too
            return encode_error(str(error))
        return encode_integers(reply_from_decision(decision, max_burst))


# --- arguments ------------------------------------------------------------------------


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
