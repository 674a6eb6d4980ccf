"""Rule sync: the rule registry spread to every member, last writer wins.

Theory of operation. Every registry entry (the default, tiers, client overrides, and
``reset:ID`` entries recording when an operator last reset a client's counts) carries
a hybrid-logical-clock stamp; entries merge last writer wins, so they may arrive in any
order, twice, or not at all until repaired. A change made here (``set``) is stamped
from this node's HLC and sent to every live peer at once; a config file's rules come
in with the file's own stamp (``put``), so a restart with an unchanged file writes
nothing newer than what it wrote before. Entries from peers (``on_entries``) advance
the HLC past their stamps, so a later local change always wins over what this node
has seen. Repair is anti-entropy: every interval this node sends its registry digest
(one order-independent hash of its durable entries) to one random peer; a peer whose
digest differs answers with every durable entry it holds and, if asked, its own
digest, so both sides converge. A joiner is sent every entry, per-call ones too, as
soon as it asks to join. Per-call entries (``cl.throttle:`` clients) are otherwise
never repaired: they expire, and their writer re-sends one its owner lacks. Entries
already past their end (an expired per-call entry, a grave older than the registry's
horizon) are not stored (``core/registry.py``).

A rule that takes effect is noted (``on_rule``, so its counting series is known), and
a reset clears the client's counts (``on_reset``); the node wires both.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain

from meshlimit.cluster.node.link import Link
from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.messages import Address, Message, RuleDigest, RuleEntries, RuleEntry
from meshlimit.core.hlc import NS_PER_MS, ZERO, Stamp, next_stamp, observe
from meshlimit.core.registry import (
    CLIENT_PREFIX,
    RESET_PREFIX,
    Entry,
    RuleRegistry,
    Value,
    value_text,
)
from meshlimit.core.rules import Rule


def client_key(client: str) -> str:
    """The registry key of a client's own rule."""
    return CLIENT_PREFIX + client


def wire_entry(key: str, entry: Entry) -> RuleEntry:
    """A registry entry as sent: rule notation (or ``@tier``, or None) and a plain stamp."""
    stamp = entry.stamp
    return RuleEntry(key, value_text(entry.value), (stamp.wall_ms, stamp.counter, stamp.node))


class RuleSync:
    """This node's HLC and the gossip that keeps every member's registry the same."""

    def __init__(
        self,
        node_id: str,
        registry: RuleRegistry,
        link: Link,
        rng: random.Random,
        *,
        wall_ns: int,
        stats: Counter[str],
        dropped: Counter[str],
        on_rule: Callable[[Rule], None],
        on_reset: Callable[[str], None],
    ) -> None:
        self._node_id = node_id
        self._registry = registry
        self._link = link
        self._rng = rng
        self._stats = stats
        self._dropped = dropped
        self._on_rule = on_rule
        self._on_reset = on_reset
        self._stamp: Stamp = next_stamp(ZERO, node_id, now_ns=wall_ns)

    def set(self, key: str, value: Value, wall: int) -> bool:
        """Change an entry here and send it to every peer; True if it changed.
        Raises ``ValueError`` for a bad key or value."""
        self._stamp = next_stamp(self._stamp, self._node_id, now_ns=wall)
        return self._write(key, value, self._stamp, wall)

    def put(self, key: str, value: Value, stamp: Stamp, wall: int) -> bool:
        """Write an entry with a stamp the caller chose (a config file's version: its
        rules are writes made when the file was last modified) and send it to every
        peer if it changed anything here. Later local writes are stamped after it.
        Raises ``ValueError`` for a bad key or value."""
        self._stamp = observe(self._stamp, stamp, self._node_id, now_ns=wall)
        return self._write(key, value, stamp, wall)

    def on_entries(self, message: RuleEntries, wall: int) -> None:
        """Merge a peer's entries; a malformed entry is dropped and counted alone."""
        now_ms = wall // NS_PER_MS
        for entry in message.entries:
            stamp = Stamp(*entry.stamp)
            self._stamp = observe(self._stamp, stamp, self._node_id, now_ns=wall)
            try:
                if self._registry.apply(entry.key, entry.value, stamp, now_ms=now_ms):
                    self._stats["rules_applied"] += 1
                    self._took_effect(entry.key)
            except ValueError:
                self._dropped["bad_rule_entry"] += 1

    def anti_entropy(self) -> None:
        """Send this registry's digest to one random peer, asking for its own back."""
        peers = self._link.peers()
        if peers:
            registry = self._registry
            self._link.send(
                self._rng.choice(peers), RuleDigest(registry.digest, registry.entry_count(), True)
            )

    def on_digest(self, sender: str, message: RuleDigest) -> None:
        """A peer's digest: if it differs, send every entry (and our digest, if asked)."""
        registry = self._registry
        if message.digest == registry.digest:
            return
        self._stats["anti_entropy_repairs"] += 1
        self.send_all(sender)
        if message.reply:
            self._link.send(sender, RuleDigest(registry.digest, registry.entry_count(), False))

    def send_all(self, node: str) -> None:
        """Send every durable entry to member ``node`` (an anti-entropy repair: per-call
        entries are soft state, re-sent by their writers, never repaired)."""
        for message in self._messages(self._registry.entries()):
            self._link.send(node, message)

    def send_all_to(self, addr: Address) -> None:
        """Send every entry, per-call ones too, to an address (a joiner that is not a
        member yet: it may own keys at once, and needs their rules)."""
        registry = self._registry
        for message in self._messages(chain(registry.entries(), registry.call_entries())):
            self._link.send_to(addr, message)

    def _messages(self, entries: Iterable[tuple[str, Entry]]) -> list[Message]:
        wired = [wire_entry(key, entry) for key, entry in entries]
        return codec.fit_items(RuleEntries, wired, self._link.message_budget)

    def _write(self, key: str, value: Value, stamp: Stamp, wall: int) -> bool:
        """Apply a write made here; if it changed anything, act on it and send it out."""
        changed = self._registry.apply(key, value, stamp, now_ms=wall // NS_PER_MS)
        if changed:
            self._took_effect(key)
            # What we now hold; a removal older than the registry's horizon is not held,
            # but it removed an older rule here, and is sent so that it does so there.
            entry = self._registry.entry(key) or Entry(value, stamp)
            message = RuleEntries((wire_entry(key, entry),))
            for node in self._link.peers():
                self._link.send(node, message)
        return changed

    def _took_effect(self, key: str) -> None:
        """An entry changed: a reset clears the client's counts, a rule's series is noted."""
        if key.startswith(RESET_PREFIX):
            self._on_reset(key[len(RESET_PREFIX) :])
            return
        entry = self._registry.entry(key)
        if entry is not None and isinstance(entry.value, Rule):
            self._on_rule(entry.value)
