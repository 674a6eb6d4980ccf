"""The cluster node for asyncio applications: the brief's embedded cluster API.

```python
node = await Node.start(bind="127.0.0.1:7400", seeds=["127.0.0.1:7401"], default="100/minute")
decision = await node.check("acme")
await node.set_rule("acme", "500/minute")
await node.stop()
```

``Node.start`` returns once the node has joined its cluster (a seed answered),
so the first check after it is decided by the client's owner; it waits at most
``join_timeout`` seconds and then raises :class:`JoinTimeoutError`, having closed
the socket. ``join_timeout=0`` returns at once instead: the node keeps trying its
seeds and decides from its degraded quota until it has joined (``node.ready``,
``await node.wait_ready()``). Seeds may be host names, resolved on every join
attempt; ``advertise`` is the address peers are told when ``bind`` is
``0.0.0.0``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.resolve import is_unspecified, resolve_address
from meshlimit.cluster.runtime import Runtime
from meshlimit.cluster.wire.addresses import Address, parse_address, parse_udp_address
from meshlimit.core.decision import Decision, capped
from meshlimit.core.registry import (
    CLIENT_PREFIX,
    DEFAULT_KEY,
    RESET_PREFIX,
    TIER_PREFIX,
    check_client_id,
    check_tier_name,
)
from meshlimit.core.rules import Rule, as_rule

#: How long :meth:`Node.start` waits for a seed to answer by default. Why 10 s: several
#: join attempts on any preset, short enough that a wrong seed is reported promptly.
JOIN_TIMEOUT_S = 10.0


class JoinTimeoutError(TimeoutError):
    """No seed answered within ``join_timeout``: the node was stopped, its port freed."""


class Node:
    """A cluster member running on the current asyncio loop."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @classmethod
    async def start(
        cls,
        bind: str,
        seeds: Sequence[str] = (),
        default: Rule | str = "100/minute",
        *,
        node_id: str | None = None,
        mode: str = "strict",
        preset: str = "lan",
        rules: dict[str, Rule | str] | None = None,
        tiers: dict[str, Rule | str] | None = None,
        seed: int | None = None,
        advertise: str | None = None,
        join_timeout: float | None = JOIN_TIMEOUT_S,
        **options: Any,
    ) -> Node:
        """Bind ``bind``, join through ``seeds``, and return the node once it has joined.

        ``preset`` picks timings (``lan``, ``local`` for loopback, ``wan``);
        ``options`` override :class:`~meshlimit.cluster.config.NodeConfig` fields.
        ``advertise`` (``HOST:PORT``) is the address peers reach this node at, when it
        is not ``bind``. ``join_timeout``: seconds to wait for a seed's answer before
        raising :class:`JoinTimeoutError` (None: wait for ever; 0: do not wait, the node
        is then not ``ready`` at first). ``seed`` seeds the RNG (probe order) only: every
        start is a new life with its own boot id, whatever the seed.
        """
        if not isinstance(bind, str):
            raise TypeError(f"bind must be a str 'HOST:PORT', got {bind!r}")
        if isinstance(seeds, str | bytes) or not all(isinstance(s, str) for s in seeds):
            raise TypeError(f"seeds must be a list of 'HOST:PORT' strings, got {seeds!r}")
        default_rule = as_rule(default, "default")
        tier_rules, client_rules = initial_rules(rules, tiers)
        bind_addr = await resolve_address(parse_address(bind))
        if advertise is not None:
            addr = await resolve_address(parse_udp_address(advertise))
        elif is_unspecified(bind_addr[0]):
            raise ValueError(f"bind {bind!r} is no address peers can reach: give advertise=")
        else:
            addr = bind_addr
        config = NodeConfig.preset(
            preset,
            node_id or "{}:{}".format(*parse_address(advertise or bind)),
            addr,
            mode=mode,
            default_rule=str(default_rule),
            **options,
        )
        runtime = Runtime(config, seed=seed, bind=bind_addr)
        await runtime.start([parse_address(s) for s in seeds])
        node = cls(runtime)
        for name, rule in tier_rules.items():
            runtime.set_rule(TIER_PREFIX + name, rule)
        for client, value in client_rules.items():
            runtime.set_rule(CLIENT_PREFIX + client, value)
        try:
            joined = join_timeout == 0 or await runtime.wait_ready(join_timeout)
        except BaseException:  # cancelled while waiting: free the port all the same
            await runtime.stop(leave=False)
            raise
        if not joined:
            reason = runtime.readiness()[1]
            await runtime.stop(leave=False)
            raise JoinTimeoutError(
                f"node {config.node_id} did not join in {join_timeout:g} s: {reason}"
            )
        return node

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._runtime.node.node_id

    @property
    def ready(self) -> bool:
        """Joined (or started without seeds) and not stopped: checks here know the ring."""
        return self._runtime.ready

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the node has joined; False if ``timeout`` seconds passed first."""
        return await self._runtime.wait_ready(timeout)

    @property
    def sans_io(self) -> Any:
        """The sans-IO node underneath (for metrics and inspection)."""
        return self._runtime.node

    async def check(self, client: str, cost: int = 1) -> Decision:
        """Decide a request; forwarded to the client's owner in strict mode. ``remaining``
        is capped at the limit, as :meth:`meshlimit.Limiter.check` caps it."""
        decision = self._runtime.check_now(client, cost)  # a check decided here: no coroutine
        if isinstance(decision, asyncio.Future):
            decision = await decision
        return capped(decision)

    async def set_rule(self, client: str, rule: Rule | str) -> None:
        """Give ``client`` a rule (or ``"@tier"``, a tier this node knows); spreads to
        every node."""
        check_client_id(client)
        if isinstance(rule, str) and rule.startswith("@"):
            await self.assign_tier(client, rule[1:])
        else:
            self._runtime.set_rule(CLIENT_PREFIX + client, as_rule(rule))

    async def assign_tier(self, client: str, tier: str) -> None:
        """Put ``client`` on a tier, which must be known here (``ValueError`` otherwise: a
        misspelled tier is an error, never the default in disguise)."""
        check_client_id(client)
        check_tier_name(tier)
        if tier not in self._runtime.node.registry.tiers():
            raise ValueError(f"no tier {tier!r} is defined (define it with set_tier first)")
        self._runtime.set_rule(CLIENT_PREFIX + client, "@" + tier)

    async def remove_rule(self, client: str) -> None:
        """Drop ``client``'s own rule; the default (or nothing) applies again."""
        check_client_id(client)
        self._runtime.set_rule(CLIENT_PREFIX + client, None)

    async def reset(self, client: str) -> None:
        """Forget ``client``'s counts cluster-wide: a stamped reset that spreads like a
        rule, so every node (and a late replica) drops what it counted before it."""
        check_client_id(client)
        self._runtime.set_rule(RESET_PREFIX + client, None)

    async def set_tier(self, name: str, rule: Rule | str) -> None:
        """Define or change a tier everywhere."""
        check_tier_name(name)
        self._runtime.set_rule(TIER_PREFIX + name, as_rule(rule))

    async def remove_tier(self, name: str) -> None:
        """Remove a tier everywhere; its clients fall back to the default."""
        check_tier_name(name)
        self._runtime.set_rule(TIER_PREFIX + name, None)

    async def set_default(self, rule: Rule | str) -> None:
        """Change the default rule everywhere."""
        self._runtime.set_rule(DEFAULT_KEY, as_rule(rule, "default"))

    def get_rule(self, client: str) -> Rule:
        """The rule in force for ``client`` on this node."""
        check_client_id(client)
        return self._runtime.node.rule_for(client)

    @property
    def default(self) -> Rule:
        """The default rule, as this node knows it."""
        return self._runtime.node.registry.default

    def tiers(self) -> dict[str, Rule]:
        """Tiers by name, as this node knows them."""
        return self._runtime.node.registry.tiers()

    def owner(self, client: str) -> str:
        """The member that owns ``client`` in this node's view of the ring."""
        check_client_id(client)
        return self._runtime.node.owner(client)

    def stats(self) -> dict[str, int]:
        """Counters of this node's work (decisions by path, drops, ...), for monitoring."""
        node = self._runtime.node
        return {**node.stats, "clients": len(node.counters), "rules": node.registry.entry_count()}

    def members(self) -> list[tuple[str, Address, str, int]]:
        """``(node, addr, state, incarnation)`` of every known member."""
        return self._runtime.node.members()

    async def stop(self) -> None:
        """Leave gracefully and close the socket."""
        await self._runtime.stop()


def initial_rules(
    rules: Mapping[str, Rule | str] | None, tiers: Mapping[str, Rule | str] | None
) -> tuple[dict[str, Rule], dict[str, Rule | str]]:
    """``Node.start``'s tiers and client rules, checked before anything binds: each rule
    parsed, each name checked, each ``"@tier"`` one of ``tiers``. Raises ``TypeError``
    or ``ValueError`` naming the argument."""
    for what, mapping in (("rules", rules), ("tiers", tiers)):
        if mapping is not None and not isinstance(mapping, Mapping):
            raise TypeError(f"{what} must be a mapping of names to rules, got {mapping!r}")
    tier_rules: dict[str, Rule] = {}
    for name, rule in (tiers or {}).items():
        check_tier_name(name)
        tier_rules[name] = as_rule(rule, f"tiers[{name!r}]")
    client_rules: dict[str, Rule | str] = {}
    for client, rule in (rules or {}).items():
        check_client_id(client)
        if isinstance(rule, str) and rule.startswith("@"):
            if rule[1:] not in tier_rules:
                raise ValueError(f"rules[{client!r}]: no tier {rule[1:]!r} in tiers")
            client_rules[client] = rule
        else:
            client_rules[client] = as_rule(rule, f"rules[{client!r}]")
    return tier_rules, client_rules
