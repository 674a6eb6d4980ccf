"""Deciding one web request: its policies checked against a backend, and the answer.

Every integration (ASGI, WSGI, Flask, Django) names the request's key, lists
its policies (:class:`PolicyCheck`: the backend's own rule for the key, or a
route's limits) and asks a :class:`Gate`, from a thread (:meth:`Gate.decide`) or
a coroutine (:meth:`Gate.adecide`). The :class:`Verdict` holds the answer and
the response headers (:func:`meshlimit.core.headers.policy_headers`), so every
front door refuses and annotates alike.

Theory of operation. Policies are checked in order and the first refusal
stops the walk: a request refused by its second limit has spent its cost
under the first (as ``limits``-based libraries do), and the later limits are
neither charged nor reported. A route limit's rule is written to the backend
for its derived client id (:mod:`meshlimit.routes`) before the id's first check
in this process, and again once half the per-call entry's lifetime has passed
(a renewal: the entry never expires while in use). The writes are remembered
in a bounded table (:class:`RuleWrites`, least recently used evicted: an evicted
id is written again on its next use). A backend elsewhere (a daemon, a cluster)
may decide before the rule has reached the id's owner: after a first write the
gate peeks (cost 0) until the owner reports the rule's limit, for at most
``rule_wait_s``; and a check decided under another limit (the entry was
evicted or expired there) writes the rule again, waits the same way and checks
once more, which can charge that one request twice, as CL.THROTTLE's retry does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshlimit.backend import BoundBackend
from meshlimit.core.decision import FALLBACK, Decision
from meshlimit.core.headers import POLICY, Policy, policy_headers
from meshlimit.core.registry import CALL_LIFETIME_FLOOR_MS, drain_ns
from meshlimit.core.rules import NS_PER_MS, Rule
from meshlimit.resp_client import ON_ERROR as ON_ERROR  # re-exported by the integrations
from meshlimit.resp_client import check_on_error

log = logging.getLogger("meshlimit.gate")

#: How long a first rule write waits for the owner to hold it. Why 1 s: a rule spreads
#: to every member within a gossip round or two (well under a second on a LAN).
RULE_WAIT_S = 1.0
#: How often the wait peeks.
RULE_POLL_S = 0.02
#: Route client ids whose rule writes this process remembers. Why 100,000: a few MB, and
#: an id beyond it costs one extra rule write on its next use, not a wrong decision.
MAX_RULE_WRITES = 100_000
#: Decision paths on which a limit other than the rule's means "decided under another
#: rule": a degraded decision, or one a client made up when the daemon was unreachable,
#: says nothing about the owner's rules.
_DECIDED_PATHS = frozenset({"owner", "forwarded", "local"})


def error_policy(value: object) -> str:
    """``on_error`` checked and its alias resolved: ``allow``, ``deny`` or ``raise`` (the
    client's own check, so every integration and the client spell it alike)."""
    if not isinstance(value, str):
        raise ValueError(f"on_error must be 'allow', 'deny' or 'raise', not {value!r}")
    return check_on_error(value)


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """One policy to check: ``cost`` against ``client`` under ``rule``, reported as ``name``.

    ``rule`` None: the backend's own rule for ``client`` (nothing is written).
    """

    name: str
    client: str
    cost: int
    rule: Rule | None = None


def default_check(key: str, cost: int) -> PolicyCheck:
    """The backend's own rule for ``key``, reported as the ``default`` policy."""
    return PolicyCheck(POLICY, key, cost)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one request: allowed or not, and the headers to send."""

    allowed: bool
    #: ``RateLimit-Policy``, ``RateLimit`` and, when refused, ``Retry-After``.
    headers: dict[str, str]
    #: Seconds until a refused request could fit (``inf``: never); 0 when allowed.
    retry_after: float = 0.0
    #: A rule in shadow mode would have refused it (it is allowed).
    shadowed: bool = False
    #: Nobody decided: the backend was unreachable and answered from its own error
    #: policy (a daemon client's ``fallback`` decision). No headers: there is no limit
    #: to report. The integrations let an allowed one through and answer a refused one
    #: 503, as their own ``on_error`` does.
    fallback: bool = False

    @classmethod
    def of(cls, results: Sequence[Policy]) -> Verdict:
        """The verdict of the policies checked (the last one refused, if any did, or was
        a fallback)."""
        if results and is_fallback(results[-1][1]):
            return cls(results[-1][1].allowed, {}, fallback=True)
        named: list[Policy] = []
        seen: set[str] = set()
        for name, decision, rule in results:
            unique, n = name, 1
            while unique in seen:
                n += 1
                unique = f"{name}#{n}"
            seen.add(unique)
            named.append((unique, decision, rule))
        refused = next((d for _, d, _ in results if not d.allowed), None)
        shadowed = any(getattr(d, "shadowed", False) for _, d, _ in results)
        retry = 0.0 if refused is None else refused.retry_after
        return cls(refused is None, policy_headers(named), retry, shadowed)

    def passing_headers(self) -> dict[str, str]:
        """The headers for a response that went through (``Retry-After`` has no meaning there)."""
        return {k: v for k, v in self.headers.items() if k != "Retry-After"}

    def refusal_body(self) -> bytes:
        """The 429 body: ``{"error": "rate limited", "retry_after": SECONDS}`` (-1: never fits)."""
        retry = -1 if math.isinf(self.retry_after) else math.ceil(self.retry_after)
        return json.dumps({"error": "rate limited", "retry_after": retry}).encode()


#: The 503 body when the limiter failed and ``on_error`` is ``deny``.
UNAVAILABLE_BODY = json.dumps({"error": "rate limiter unavailable"}).encode()


def renew_after_s(rule: Rule) -> float:
    """Seconds after writing a route rule that it is written again: half the per-call
    entry's lifetime (``RuleRegistry.call_lifetime_ms`` with the default floor)."""
    lifetime_ms = max(CALL_LIFETIME_FLOOR_MS, 2 * -(-drain_ns(rule) // NS_PER_MS))
    return lifetime_ms / 2000


class RuleWrites:
    """Route client ids whose rule this process wrote, and when; bounded, LRU. Thread-safe."""

    def __init__(
        self, max_entries: int = MAX_RULE_WRITES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._written: OrderedDict[str, tuple[Rule, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._written)

    def due(self, client: str, rule: Rule) -> str | None:
        """``"new"`` (never written here, or another rule), ``"renew"`` (half its life gone)
        or None (fresh)."""
        with self._lock:
            held = self._written.get(client)
            if held is None or held[0] != rule:
                return "new"
            self._written.move_to_end(client)
            return "renew" if self._clock() >= held[1] else None

    def note(self, client: str, rule: Rule) -> None:
        """``client``'s rule was just written."""
        with self._lock:
            self._written[client] = (rule, self._clock() + renew_after_s(rule))
            self._written.move_to_end(client)
            while len(self._written) > self.max_entries:
                self._written.popitem(last=False)


def is_fallback(decision: Decision) -> bool:
    """Whether no limiter made ``decision`` (path ``fallback``: the daemon was unreachable)."""
    return decision.path == FALLBACK


def _ordered(checks: Sequence[PolicyCheck]) -> list[PolicyCheck]:
    """The backend's own rule first, then route limits by window, shortest first: a
    request refused by a later limit has spent its cost under the earlier ones, and
    a short window gives that back soonest."""
    return sorted(checks, key=lambda check: 0 if check.rule is None else check.rule.window_ns)


def under_another_rule(decision: Decision, rule: Rule) -> bool:
    """Whether ``decision`` was made under a rule other than ``rule`` (its limit differs)."""
    return decision.path in _DECIDED_PATHS and decision.limit != rule.limit


class Gate:
    """Checks requests' policies against one backend (see the module docstring).

    ``backend``: see :mod:`meshlimit.backend`; ``what`` names it in errors.
    ``rule_wait_s``: how long a route rule's first write waits for its owner.
    """

    def __init__(
        self,
        backend: object,
        *,
        what: str = "limiter",
        rule_wait_s: float = RULE_WAIT_S,
        max_rule_writes: int = MAX_RULE_WRITES,
    ) -> None:
        self.backend = BoundBackend(backend, what=what)
        self.rule_wait_s = rule_wait_s
        self.writes = RuleWrites(max_rule_writes)
        # In process (Limiter): a write holds at once, nothing to wait for.
        self._remote = self.backend.is_async or self.backend.blocking

    # --- from a thread ----------------------------------------------------------------

    def decide(self, checks: Sequence[PolicyCheck]) -> Verdict:
        """Check ``checks`` in order from threaded code; the first refusal ends it."""
        results: list[Policy] = []
        for check in _ordered(checks):
            decision, rule = self._check(check)
            results.append((check.name, decision, rule))
            if not decision.allowed or is_fallback(decision):
                break
        return Verdict.of(results)

    def _check(self, check: PolicyCheck) -> tuple[Decision, Rule | None]:
        backend, rule = self.backend, check.rule
        if rule is None:
            decision = backend.check(check.client, check.cost)
            return decision, backend.rule_for(check.client, decision)
        due = self.writes.due(check.client, rule)
        if due is not None:
            backend.set_rule(check.client, rule)
            self.writes.note(check.client, rule)
            if due == "new" and self._remote:
                self._wait_for_rule(check.client, rule)
        decision = backend.check(check.client, check.cost)
        if under_another_rule(decision, rule):
            self._log_mismatch(check, decision)
            backend.set_rule(check.client, rule)
            self.writes.note(check.client, rule)
            if self._remote:
                self._wait_for_rule(check.client, rule)
            decision = backend.check(check.client, check.cost)
        return decision, rule

    def _wait_for_rule(self, client: str, rule: Rule) -> None:
        deadline = time.monotonic() + self.rule_wait_s
        while under_another_rule(self.backend.check(client, 0), rule):
            if time.monotonic() >= deadline:
                self._log_slow_rule(client, rule)
                return
            time.sleep(RULE_POLL_S)

    # --- from a coroutine -------------------------------------------------------------

    async def adecide(self, checks: Sequence[PolicyCheck]) -> Verdict:
        """As :meth:`decide`, from a coroutine: a blocking backend runs off the loop."""
        if not self.backend.is_async:
            if self.backend.blocking:
                return await asyncio.to_thread(self.decide, checks)
            return self.decide(checks)  # in process: about a microsecond, never waits
        results: list[Policy] = []
        for check in _ordered(checks):
            decision, rule = await self._acheck(check)
            results.append((check.name, decision, rule))
            if not decision.allowed or is_fallback(decision):
                break
        return Verdict.of(results)

    async def _acheck(self, check: PolicyCheck) -> tuple[Decision, Rule | None]:
        backend, rule = self.backend, check.rule
        if rule is None:
            decision = await backend.acheck(check.client, check.cost)
            return decision, await backend.arule_for(check.client, decision)
        due = self.writes.due(check.client, rule)
        if due is not None:
            await backend.aset_rule(check.client, rule)
            self.writes.note(check.client, rule)
            if due == "new":
                await self._await_rule(check.client, rule)
        decision = await backend.acheck(check.client, check.cost)
        if under_another_rule(decision, rule):
            self._log_mismatch(check, decision)
            await backend.aset_rule(check.client, rule)
            self.writes.note(check.client, rule)
            await self._await_rule(check.client, rule)
            decision = await backend.acheck(check.client, check.cost)
        return decision, rule

    async def _await_rule(self, client: str, rule: Rule) -> None:
        deadline = time.monotonic() + self.rule_wait_s
        while under_another_rule(await self.backend.acheck(client, 0), rule):
            if time.monotonic() >= deadline:
                self._log_slow_rule(client, rule)
                return
            await asyncio.sleep(RULE_POLL_S)

    # --- reports ----------------------------------------------------------------------

    def _log_mismatch(self, check: PolicyCheck, decision: Decision) -> None:
        log.info(
            "route rule %s for %r was not in force (limit %d): writing it again",
            check.rule,
            check.client,
            decision.limit,
        )

    def _log_slow_rule(self, client: str, rule: Rule) -> None:
        log.warning(
            "route rule %s for %r not in force after %.1f s; checking anyway",
            rule,
            client,
            self.rule_wait_s,
        )
