"""The RESP front-end's commands: each one validated, run against the runtime, answered.

Commands (names are case-insensitive):

- ``PING [message]``: ``+PONG``, or the message as a bulk string.
- ``ML.CHECK client [cost] [WITHWINDOW]``: a check of ``client`` (cost 1 by
  default), answered with ``[allowed, limit, remaining, reset_after_ms,
  retry_after_ms, path]``, and ``window_ms`` after them when asked ``WITHWINDOW``
  (the window of the limit reported, for ``RateLimit-Policy``'s ``w``; 0 when
  unknown): ``allowed`` 1 or 0; ``remaining`` at most ``limit``;
  ``reset_after_ms`` and ``retry_after_ms`` whole milliseconds rounded up (never
  early); ``retry_after_ms`` is 0 when allowed and -1 when the cost can never fit,
  as in the HTTP API; ``path`` a bulk string, ``owner``, ``forwarded``, ``local``,
  ``degraded`` or ``overloaded``. Under a rule of several limits the most
  restrictive is reported. The six-element reply is the one older clients read.
- ``ML.RULE SET client rule``: give ``client`` its own rule (``10/second;1000/hour``)
  or a tier (``@gold``, one this node knows), spread to every node: ``+OK``.
  ``ML.RULE GET client``: ``[rule, source]``, the rule in force and where it comes
  from, ``client``, ``tier:NAME`` or ``default``. ``ML.RULE DEL client``: drop the
  client's own rule, ``:1`` if it had one, else ``:0``.
- ``ML.RESET client``: forget the client's counts cluster-wide: ``+OK``.
- ``CL.THROTTLE key max_burst count_per_period period [quantity]``:
  redis-cell's command and reply, ``[limited, limit, remaining, retry_after,
  reset_after]`` (seconds, -1 when no retry applies); cluster-wide, see below.
- ``HELLO``, ``CLIENT``, ``ECHO``, ``SELECT``, ``COMMAND``: the connection and server
  commands Redis tooling sends (``resp_session.py``); ``QUIT``: ``+OK``, then the
  connection closes (handled by the connection, ``resp.py``).

A check runs synchronously (``Runtime.check_now``, ``check_batch`` for the
connection's batches of plain ``ML.CHECK``): one the node decides itself is
answered at once; a forwarded one is answered by a future that the connection
waits on, in command order (one future for a whole batch: its replies, joined, then
an empty reply for each other command of it, so that replies owed count commands). CL.THROTTLE's coroutine is stepped eagerly
(:func:`~meshlimit.cluster.daemon.eager.start_eagerly`) to the same effect.

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
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from meshlimit.cluster.daemon.eager import start_eagerly
from meshlimit.cluster.daemon.resp_protocol import (
    OK,
    encode_bulk,
    encode_error,
    encode_integers,
    show,
)
from meshlimit.cluster.daemon.resp_session import (
    CommandError,
    CommandInfo,
    Session,
    SessionCommands,
)
from meshlimit.cluster.daemon.throttle import (
    check_params,
    reply_from_decision,
    seconds_to_ns,
    throttle_rule,
)
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.decision import NS_PER_S, PATHS, Decision, capped
from meshlimit.core.registry import (
    CLIENT_PREFIX,
    MAX_CLIENT_BYTES,
    PER_CALL_PREFIX,
    RESET_PREFIX,
    check_tier_name,
)
from meshlimit.core.rules import MAX_COUNT, MAX_RULE_CHARS, NS_PER_MS, Rule, parse_rule

log = logging.getLogger("meshlimit.resp")

#: CL.THROTTLE keys are checked as these clients, apart from ML.CHECK's own ids; the
#: registry holds their rules as per-call entries.
THROTTLE_PREFIX = PER_CALL_PREFIX
#: Per-route counters of the web integrations (``meshlimit.routes.ROUTE_PREFIX``): per-call
#: entries too (bounded, expiring), which a client may write with ``ML.RULE SET``.
ROUTE_PREFIX = PER_CALL_PREFIX + "route:"
MAX_KEY_BYTES = MAX_CLIENT_BYTES - len(THROTTLE_PREFIX)
#: redis-cell parses its numbers as i64.
_I64_MAX = 2**63 - 1
_INTEGER = re.compile(rb"[+-]?[0-9]{1,19}")
#: A command's reply: its bytes now, or a future of them (a check waiting for its owner).
Reply = bytes | asyncio.Future[bytes]


def check_reply(decision: Decision, *, with_window: bool = False) -> bytes:
    """``ML.CHECK``'s reply: ``[allowed, limit, remaining, reset_after_ms, retry_after_ms,
    path]``, then ``window_ms`` when asked (``WITHWINDOW``); ``remaining`` capped at the limit."""
    if decision[0] and not with_window:  # the common case: one format, the same bytes
        template = _ALLOWED_REPLY.get(decision[5])
        if template is not None:
            limit, remaining = decision[1], decision[2]
            reset_ms = -(-round(decision[3] * NS_PER_S) // NS_PER_MS)  # _ceil_ms inlined
            return template % (limit, remaining if remaining <= limit else limit, reset_ms)
    decision = capped(decision)
    if decision.allowed:
        retry_ms = 0
    elif math.isinf(decision.retry_after):
        retry_ms = -1
    else:
        retry_ms = _ceil_ms(decision.retry_after)
    path = decision.path.encode()
    reply = _CHECK_REPLY % (
        b"7" if with_window else b"6",
        decision.allowed,
        decision.limit,
        decision.remaining,
        _ceil_ms(decision.reset_after),
        retry_ms,
        len(path),
        path,
    )
    if with_window:
        reply += b":%d\r\n" % -(-decision.window_ns // NS_PER_MS)
    return reply


_CHECK_REPLY = b"*%b\r\n:%d\r\n:%d\r\n:%d\r\n:%d\r\n:%d\r\n$%d\r\n%b\r\n"
#: An allowed decision's six-element reply by path, with ``limit, remaining, reset_after_ms``
#: to fill in: ``_CHECK_REPLY`` with the rest already in place.
_ALLOWED_REPLY = {
    path: b"*6\r\n:1\r\n:%%d\r\n:%%d\r\n:%%d\r\n:0\r\n$%d\r\n%b\r\n" % (len(path), path.encode())
    for path in PATHS
}
_WITHWINDOW = b"WITHWINDOW"
#: Command table entries: handler, fewest and most arguments (the name included), flags.
_Spec = tuple[Callable[[list[bytes]], Reply], int, int, tuple[bytes, ...]]


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
        self._commands: dict[bytes, _Spec] = {
            b"PING": (self._ping, 1, 2, (b"fast", b"stale")),
            b"ML.CHECK": (self._ml_check, 2, 4, (b"write", b"fast")),
            b"ML.RULE": (self._ml_rule, 3, 4, (b"write",)),
            b"ML.RESET": (self._ml_reset, 2, 2, (b"write",)),
            b"CL.THROTTLE": (self._cl_throttle, 5, 6, (b"write",)),
        }
        self.session = SessionCommands(self.command_infos)
        self._sessions = 0
        #: The session of commands run without a connection (tests, :meth:`execute` bare).
        self._no_connection = self.new_session()

    def new_session(self) -> Session:
        """A new connection's state, with its id (``CLIENT ID``, ``HELLO``'s ``id``)."""
        self._sessions += 1
        return Session(self._sessions)

    def command_infos(self) -> list[CommandInfo]:
        """Every command served, for ``COMMAND`` (``QUIT`` is the connection's own)."""
        infos = [
            CommandInfo(name, fewest if fewest == most else -fewest, flags, 1 if fewest > 1 else 0)
            for name, (_, fewest, most, flags) in self._commands.items()
        ]
        quit_info = CommandInfo(b"QUIT", -1, (b"noscript", b"loading", b"stale", b"fast"))
        return [*infos, *self.session.infos(), quit_info]

    def execute(self, args: list[bytes], session: Session | None = None) -> Reply:
        """Run one command for the connection ``session``: its reply now, or a future of
        it. Never raises."""
        self.stats["commands"] += 1
        return self._run(args, session)

    def _run(self, args: list[bytes], session: Session | None) -> Reply:
        """:meth:`execute`, uncounted."""
        try:
            name = args[0].upper()
            spec = self._commands.get(name)
            if spec is None:
                session_spec = self.session.handlers.get(name)
                if session_spec is None:
                    raise CommandError(f"unknown command '{show(args[0])}'")
                handler, fewest, most = session_spec
                _check_arity(args, fewest, most)
                return handler(args, session or self._no_connection)
            _check_arity(args, spec[1], spec[2])
            return spec[0](args)
        except CommandError as error:
            self.stats["command_errors"] += 1
            return encode_error(str(error), error.code)
        except Exception:
            log.exception("unexpected error command=%s", show(args[0]))
            return encode_error("internal error (logged by the node)")

    # --- the commands -----------------------------------------------------------------

    def _ping(self, args: list[bytes]) -> Reply:
        return b"+PONG\r\n" if len(args) == 1 else encode_bulk(args[1])

    def _ml_check(self, args: list[bytes]) -> Reply:
        client = _text_arg(args[1], "client id", MAX_CLIENT_BYTES)
        rest = args[2:]
        with_window = bool(rest) and rest[-1].upper() == _WITHWINDOW
        if with_window:
            rest = rest[:-1]
        if len(rest) > 1:
            raise CommandError(
                "wrong number of arguments for 'ml.check' command "
                "(ML.CHECK client [cost] [WITHWINDOW])"
            )
        cost = _int_arg(rest[0], "cost", 0, MAX_COUNT) if rest else 1
        return self._check(client, cost, with_window)

    def ml_check_batch(self, raws: list[bytes]) -> list[Reply]:
        """``ML.CHECK client`` (cost 1, six elements) for each client of ``raws``, the
        replies in order: as :meth:`execute` answers each, but checked as one batch of the
        runtime (``Runtime.check_batch``), the connection's hot path. The caller has seen
        to the name and the arity. Never raises."""
        self.stats["commands"] += len(raws)
        clients = [
            r.decode("ascii") for r in raws if r.isascii() and 0 < len(r) <= MAX_CLIENT_BYTES
        ]
        if len(clients) < len(raws):  # some need the full argument checks and their errors
            return [self._run([b"ML.CHECK", raw], None) for raw in raws]
        try:
            decided = self.runtime.check_batch(clients, 1)
        except (TypeError, ValueError):  # the node's last word on an id: each its own error
            return [self._run([b"ML.CHECK", raw], None) for raw in raws]
        if isinstance(decided, list):
            return check_replies(decided)  # type: ignore[return-value]  # bytes are replies
        # Forwarded checks: one future of every reply of the batch (their bytes, joined),
        # then an empty reply per other command, so that replies owed count commands.
        replies: asyncio.Future[bytes] = decided.get_loop().create_future()
        decided.add_done_callback(partial(_replies_when_decided, replies))
        replies.add_done_callback(partial(_withdraw, decided))
        return [replies, *[b""] * (len(raws) - 1)]

    def _check(self, client: str, cost: int, with_window: bool) -> Reply:
        """The check's reply: now when the node decides it at once, else a future of it."""
        try:
            decision = self.runtime.check_now(client, cost)
        except ValueError as error:  # validated above; the node has the last word
            return encode_error(str(error))
        return self._reply(decision, with_window)

    def _reply(self, decision: Decision | asyncio.Future[Decision], with_window: bool) -> Reply:
        """A decision's reply, or a future of it for a decision still to come (the
        owner's answer: no task, one callback)."""
        if not isinstance(decision, asyncio.Future):
            return check_reply(decision, with_window=with_window)
        reply: asyncio.Future[bytes] = decision.get_loop().create_future()
        decision.add_done_callback(partial(_reply_when_decided, reply, with_window))
        reply.add_done_callback(partial(_withdraw, decision))
        return reply

    def _ml_rule(self, args: list[bytes]) -> Reply:
        """``ML.RULE SET client rule``, ``ML.RULE GET client``, ``ML.RULE DEL client``."""
        sub = args[1].upper()
        arity = {b"SET": 4, b"GET": 3, b"DEL": 3}.get(sub)
        if arity is None or len(args) != arity:
            raise CommandError("syntax error: ML.RULE SET client rule | GET client | DEL client")
        client = _client_arg(args[2])
        registry = self.runtime.node.registry
        if sub == b"GET":
            own = registry.client_value(client)
            rule = registry.resolve(client)
            if isinstance(own, Rule):
                source = b"client"
            elif isinstance(own, str) and registry.tiers().get(own[1:]) == rule:
                source = b"tier:" + own[1:].encode()
            else:
                source = b"default"
            return b"*2\r\n" + encode_bulk(str(rule).encode()) + encode_bulk(source)
        if sub == b"DEL":
            had = registry.client_value(client) is not None
            self._set(CLIENT_PREFIX + client, None)
            return b":%d\r\n" % had
        value = _text_arg(args[3], "rule", MAX_RULE_CHARS)
        if value.startswith("@"):
            try:
                check_tier_name(value[1:])
            except ValueError as error:
                raise CommandError(str(error)) from None
            if value[1:] not in registry.tiers():
                raise CommandError(f"no tier {value[1:]!r} is defined on this node")
            self._set(CLIENT_PREFIX + client, value)
        else:
            try:
                rule = parse_rule(value)
            except ValueError as error:
                raise CommandError(str(error)) from None
            self._set(CLIENT_PREFIX + client, rule)
        return OK

    def _ml_reset(self, args: list[bytes]) -> Reply:
        """``ML.RESET client``: a stamped reset that spreads like a rule."""
        self._set(RESET_PREFIX + _client_arg(args[1]), None)
        return OK

    def _set(self, key: str, value: Rule | str | None) -> None:
        try:
            self.runtime.set_rule(key, value)
        except ValueError as error:  # the registry is full, say
            raise CommandError(str(error)) from None

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


def check_replies(decisions: list[Decision]) -> list[bytes]:
    """``ML.CHECK``'s replies (without the window) to a batch of decisions, in order:
    ``check_reply`` of each, with its common case inlined (the same bytes)."""
    replies: list[bytes] = []
    append = replies.append
    allowed = _ALLOWED_REPLY
    reset, reset_ms = None, 0  # checks of one window in a batch share their reset
    for decision in decisions:
        if decision[0] and decision[5] in allowed:
            _, limit, remaining, reset_after, _, path, _, _ = decision
            if reset_after != reset:
                reset = reset_after
                reset_ms = -(-round(reset_after * NS_PER_S) // NS_PER_MS)
            append(allowed[path] % (limit, remaining if remaining <= limit else limit, reset_ms))
        else:
            append(check_reply(decision))
    return replies


def _withdraw(decided: asyncio.Future[Any], reply: asyncio.Future[bytes]) -> None:
    """A reply cancelled (its connection closed) withdraws the check or batch it awaits:
    one still waiting for room is never sent (``Runtime._let_waiters_go`` skips it); one
    in flight is answered by its owner all the same, and the answer dropped."""
    if reply.cancelled() and not decided.done():
        decided.cancel()


def _replies_when_decided(
    replies: asyncio.Future[bytes], decided: asyncio.Future[list[Decision]]
) -> None:
    """Resolve ``replies`` with the joined replies of a batch's decisions (cancelled with
    it: the node stopped)."""
    if replies.done():
        return
    if decided.cancelled():
        replies.cancel()
        return
    error = decided.exception()
    if error is None:
        replies.set_result(b"".join(check_replies(decided.result())))
    else:
        replies.set_exception(error)


def _reply_when_decided(
    reply: asyncio.Future[bytes], with_window: bool, decided: asyncio.Future[Decision]
) -> None:
    """Resolve ``reply`` from a check's decision (cancelled with it: the node stopped)."""
    if reply.done():
        return
    if decided.cancelled():
        reply.cancel()
        return
    error = decided.exception()
    if error is None:
        reply.set_result(check_reply(decided.result(), with_window=with_window))
    elif isinstance(error, ValueError):  # from a check that waited for room first
        reply.set_result(encode_error(str(error)))
    else:
        reply.set_exception(error)


# --- arguments ------------------------------------------------------------------------


def _check_arity(args: list[bytes], fewest: int, most: int) -> None:
    if not fewest <= len(args) <= most:
        name = args[0].decode("ascii").lower()
        raise CommandError(f"wrong number of arguments for '{name}' command")


def _client_arg(raw: bytes) -> str:
    """A client id whose rules an operator may write (not a CL.THROTTLE key's; a route
    counter's, which expires like one, may be)."""
    client = _text_arg(raw, "client id", MAX_CLIENT_BYTES)
    if client.startswith(THROTTLE_PREFIX) and not client.startswith(ROUTE_PREFIX):
        raise CommandError(f"client ids under {THROTTLE_PREFIX!r} are CL.THROTTLE's keys")
    return client


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
