"""The in-process limiter: one process, no network, the embedded default.

:class:`Limiter` is the engine of ``meshlimit.core`` with a clock and a lock.
Time is read here and nowhere below, and the clock is injectable so tests and
demos can drive time by hand. A check holds the lock for about a
microsecond and never blocks on IO, so it is safe to call from many threads
and directly from asyncio code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from meshlimit.core.decision import Decision
from meshlimit.core.engine import DEFAULT_MAX_CLIENTS, Engine, check_max_clients
from meshlimit.core.hlc import ZERO, Stamp, next_stamp
from meshlimit.core.registry import (
    CLIENT_PREFIX,
    DEFAULT_KEY,
    TIER_PREFIX,
    check_client_id,
    check_tier_name,
)
from meshlimit.core.rules import Rule, as_rule

Clock = Callable[[], int]


class Limiter:
    """Per-client rate limits enforced in this process.

    ``default`` applies to every client without a rule of its own; ``rules``
    maps clients to rules (``"1000/minute burst 200"``) or tiers (``"@gold"``);
    ``tiers`` names rules that many clients share. ``clock`` returns wall time
    in nanoseconds (windows align to wall time). A rule may hold several limits
    (``"10/second;1000/hour"``): every one must allow a request.

    Arguments of the wrong type raise ``TypeError``, bad values ``ValueError``,
    each naming the argument; a tier must be defined before a client is put on it
    (a misspelled tier is an error, never the default in disguise).
    """

    def __init__(
        self,
        default: Rule | str = "100/minute",
        rules: Mapping[str, Rule | str] | None = None,
        tiers: Mapping[str, Rule | str] | None = None,
        *,
        clock: Clock = time.time_ns,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        node_id: str = "local",
    ) -> None:
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning nanoseconds, got {clock!r}")
        check_max_clients(max_clients)
        for what, mapping in (("rules", rules), ("tiers", tiers)):
            if mapping is not None and not isinstance(mapping, Mapping):
                raise TypeError(f"{what} must be a mapping of names to rules, got {mapping!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self._node_id = node_id
        self._stamp: Stamp = ZERO
        self._engine = Engine(as_rule(default, "default"), max_clients=max_clients)
        for name, rule in (tiers or {}).items():
            self.set_tier(name, rule)
        for client, rule in (rules or {}).items():
            self.set_rule(client, rule)

    def check(self, client: str, cost: int = 1) -> Decision:
        """Count ``cost`` against ``client`` if it fits; ``cost=0`` only peeks."""
        # acquire/release rather than ``with``: half the lock's cost (60 ns, not 117 ns).
        self._lock.acquire()
        try:
            return self._engine.check(client, cost, now_ns=self._clock())
        finally:
            self._lock.release()

    def set_rule(self, client: str, rule: Rule | str) -> None:
        """Give ``client`` its own rule, or a tier with ``"@NAME"``. Counts are kept
        when only the limit or burst changes; a new window starts a fresh count."""
        check_client_id(client)  # before building the key: a non-str id is a TypeError
        if isinstance(rule, str) and rule.startswith("@"):
            self.assign_tier(client, rule[1:])
        else:
            self._write(CLIENT_PREFIX + client, as_rule(rule))

    def assign_tier(self, client: str, tier: str) -> None:
        """Put ``client`` on a named tier, which must exist (``ValueError`` otherwise)."""
        check_client_id(client)
        check_tier_name(tier)
        with self._lock:
            known = tier in self._engine.registry.tiers()
        if not known:
            raise ValueError(f"no tier {tier!r} is defined (define it with set_tier first)")
        self._write(CLIENT_PREFIX + client, "@" + tier)

    def remove_rule(self, client: str) -> None:
        """Drop ``client``'s own rule or tier; the default applies again."""
        check_client_id(client)
        self._write(CLIENT_PREFIX + client, None)

    def reset(self, client: str) -> None:
        """Forget ``client``'s counts: its next request starts a fresh window."""
        check_client_id(client)
        with self._lock:
            self._engine.reset(client)

    def get_rule(self, client: str) -> Rule:
        """The rule in force for ``client``."""
        check_client_id(client)
        with self._lock:
            return self._engine.registry.resolve(client)

    def set_tier(self, name: str, rule: Rule | str) -> None:
        """Define or change a tier."""
        check_tier_name(name)
        self._write(TIER_PREFIX + name, as_rule(rule))

    def remove_tier(self, name: str) -> None:
        """Remove a tier; its clients fall back to the default."""
        check_tier_name(name)
        self._write(TIER_PREFIX + name, None)

    def set_default(self, rule: Rule | str) -> None:
        """Change the default rule."""
        self._write(DEFAULT_KEY, as_rule(rule, "default"))

    @property
    def default(self) -> Rule:
        """The default rule."""
        return self._engine.registry.default

    def tiers(self) -> dict[str, Rule]:
        """Tiers by name."""
        with self._lock:
            return self._engine.registry.tiers()

    def stats(self) -> dict[str, int]:
        """Clients tracked and evictions, for monitoring."""
        with self._lock:
            dead, live = self._engine.evictions()
            return {
                "clients": self._engine.client_count(),
                "rules": self._engine.registry.entry_count(),
                "evicted_dead": dead,
                "evicted_live": live,
            }

    def _write(self, key: str, value: Rule | str | None) -> None:
        with self._lock:
            self._stamp = next_stamp(self._stamp, self._node_id, now_ns=self._clock())
            self._engine.apply_rule(key, value, self._stamp)
