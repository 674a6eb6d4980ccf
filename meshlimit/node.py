"""The cluster node for asyncio applications: the brief's embedded cluster API.

```python
node = await Node.start(bind="127.0.0.1:7400", seeds=["127.0.0.1:7401"], default="100/minute")
decision = await node.check("acme")
await node.set_rule("acme", "500/minute")
await node.stop()
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.runtime import Runtime
from meshlimit.cluster.wire.addresses import Address, parse_address
from meshlimit.core.decision import Decision
from meshlimit.core.registry import CLIENT_PREFIX, DEFAULT_KEY, TIER_PREFIX
from meshlimit.core.rules import Rule, as_rule


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
        **options: Any,
    ) -> Node:
        """Bind ``bind``, join through ``seeds``, and return the running node.

        ``preset`` picks timings (``lan``, ``local`` for loopback, ``wan``);
        ``options`` override :class:`~meshlimit.cluster.config.NodeConfig` fields.
        """
        addr = parse_address(bind)
        config = NodeConfig.preset(
            preset,
            node_id or f"{addr[0]}:{addr[1]}",
            addr,
            mode=mode,
            default_rule=str(as_rule(default)),
            **options,
        )
        runtime = Runtime(config, seed=seed)
        await runtime.start([parse_address(s) for s in seeds])
        node = cls(runtime)
        for name, rule in (tiers or {}).items():
            await node.set_tier(name, rule)
        for client, rule in (rules or {}).items():
            await node.set_rule(client, rule)
        return node

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._runtime.node.node_id

    @property
    def sans_io(self) -> Any:
        """The sans-IO node underneath (for metrics and inspection)."""
        return self._runtime.node

    async def check(self, client: str, cost: int = 1) -> Decision:
        """Decide a request; forwarded to the client's owner in strict mode."""
        return await self._runtime.check(client, cost)

    async def set_rule(self, client: str, rule: Rule | str) -> None:
        """Give ``client`` a rule (or ``"@tier"``); spreads to every node."""
        value = rule if isinstance(rule, str) and rule.startswith("@") else as_rule(rule)
        self._runtime.set_rule(CLIENT_PREFIX + client, value)

    async def remove_rule(self, client: str) -> None:
        """Drop ``client``'s own rule; the default (or nothing) applies again."""
        self._runtime.set_rule(CLIENT_PREFIX + client, None)

    async def set_tier(self, name: str, rule: Rule | str) -> None:
        """Define or change a tier everywhere."""
        self._runtime.set_rule(TIER_PREFIX + name, as_rule(rule))

    async def set_default(self, rule: Rule | str) -> None:
        """Change the default rule everywhere."""
        self._runtime.set_rule(DEFAULT_KEY, as_rule(rule))

    def get_rule(self, client: str) -> Rule:
        """The rule in force for ``client`` on this node."""
        return self._runtime.node.rule_for(client)

    def members(self) -> list[tuple[str, Address, str, int]]:
        """``(node, addr, state, incarnation)`` of every known member."""
        return self._runtime.node.members()

    async def stop(self) -> None:
        """Leave gracefully and close the socket."""
        await self._runtime.stop()
