"""Decisions under the rule in force: ``stale_rule``.

Rule writes converge (``rules_diverged``, at the end), but a node could hold the newest
rule and still decide under an older one (a cache of resolved rules that a write does not
clear, a tier change that its clients do not see). So the checkers keep, for each life
and client, the rule of its last decision and the digest of the node's registry before
the input that made it. At the end, a running life whose registry has not changed since
(same digest) must have decided under the rule that registry resolves to -- resolved
afresh, by a registry rebuilt from its entries, so that no state of the node's own takes
part. A client with a per-call entry (``CL.THROTTLE``) is not judged.

And ``stamps_not_increasing``: a node's hybrid logical clock stamps each write above every
stamp it issued before (``core/hlc.py``), whatever its wall clock does, in one millisecond
too; two writes of one life with stamps out of their order, or equal, let the older (or the
text of the value) win where the later write must.
"""

from __future__ import annotations

from typing import Any

from meshlimit.cluster.node import Node
from meshlimit.core.registry import CLIENT_PREFIX, DEFAULT_KEY, RuleRegistry
from meshlimit.core.rules import Rule

from .windows import LifeKey


class RulesInForce:
    """The rule of each life's last decision per client, and the registry it came from."""

    def __init__(self) -> None:
        self._last: dict[tuple[LifeKey, str], tuple[Rule, int]] = {}

    def note(self, life: LifeKey, client: str, rule: Rule, digest: int) -> None:
        """``life`` decided for ``client`` under ``rule``, its registry at ``digest``
        before the input."""
        self._last[(life, client)] = (rule, digest)

    def judge(self, nodes: dict[str, tuple[LifeKey, Node]]) -> list[str]:
        """Each running life's last decisions against its registry at the end."""
        out = []
        fresh = {name: _rebuilt(node.registry) for name, (_, node) in nodes.items()}
        calls = {
            name: {k for k, _ in node.registry.call_entries()} for name, (_, node) in nodes.items()
        }
        for (life, client), (rule, digest) in sorted(self._last.items()):
            entry = nodes.get(life[0])
            if entry is None or entry[0] != life or digest != entry[1].registry.digest:
                continue  # not running, a later life, or the registry changed since
            if CLIENT_PREFIX + client in calls[life[0]]:
                continue
            expected = fresh[life[0]].resolve(client)
            if rule != expected:
                out.append(
                    f"{life[0]} (life {life[1]}) decided {client} last under {rule} while"
                    f" its registry, unchanged since, resolves it to {expected}"
                )
        return out


def unordered_stamps(writes: dict[str, list[Any]]) -> list[str]:
    """Writes of one life whose HLC stamps do not rise in the order it made them (``writes``:
    by registry key, each list in the order written, each with ``stamp``, ``at``, ``writer``)."""
    by_life: dict[tuple[str, int], list[tuple[int, int, tuple[Any, ...], str]]] = {}
    order = 0
    for key, written in writes.items():
        for write in written:
            if write.writer is not None:
                by_life.setdefault(write.writer, []).append((write.at, order, write.stamp, key))
            order += 1
    out = []
    for life, made in sorted(by_life.items()):
        made.sort(key=lambda w: (w[0], tuple(w[2])))  # an instant's writes: by their stamps
        for (at_a, _, a, key_a), (at_b, _, b, key_b) in zip(made, made[1:], strict=False):
            if at_b > at_a and tuple(b) <= tuple(a) or tuple(b) == tuple(a):
                out.append(
                    f"{life[0]} (life {life[1]}) stamped {key_b} at {at_b / 1e9:.6f} s with"
                    f" {tuple(b)}, not above its earlier write of {key_a} ({tuple(a)})"
                )
                break
    return out


def _rebuilt(registry: RuleRegistry) -> RuleRegistry:
    """A fresh registry holding ``registry``'s durable entries."""
    entries = dict(registry.entries())
    default = entries.pop(DEFAULT_KEY)
    assert isinstance(default.value, Rule)
    rebuilt = RuleRegistry(default.value)
    rebuilt.set_default(default.value, default.stamp)
    for key, entry in entries.items():
        rebuilt.apply(key, entry.value, entry.stamp)
    return rebuilt
