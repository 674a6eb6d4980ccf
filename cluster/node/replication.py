"""Replication: counter deltas to the replicas, hand-over, and merging what peers send.

Theory of operation. A counter this node admits into is marked changed; every gossip
round (``gossip``) sends this node's own slots of the changed counters to the client's
ring successors (strict mode: the owner's replicas) or to every peer (local mode), so
a new owner takes over with the counts. When the ring changes, or a member joins or
restarts, every counter held here is queued for hand-over (``restart_handover``): all
slots, not only ours, go to the counter's new holders, ``2000`` counters a round. On a
graceful leave everything goes at once to the holders in the ring without this node
(``hand_over_everything``).

Incoming deltas (``merge``) merge slot by slot (G-counters: per-slot max, so loss,
duplication and reordering are harmless), except for windows that began before an
operator reset the client: a grow-only counter would otherwise bring the cleared
counts back (``reset``, ``_after_reset``).

The series window map (``series_windows``: counting series name -> window length)
lives here: it names what may be merged, swept and gossiped. Rules noted by rule sync
add to it; series named by a peer are learned if well-formed, up to a bound.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import TypeVar

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.link import Link
from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.messages import CounterDeltas, CounterSlot
from meshlimit.core.counters import CounterStore
from meshlimit.core.registry import RuleRegistry
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import Rule

#: A counter's key: ``(series, client)``.
SeriesKey = tuple[str, str]
#: Counters handed over per gossip round after a ring change.
HANDOVER_BUDGET = 2000
#: Most series learned from peers' deltas (beyond it, unknown series are dropped).
MAX_SERIES = 1024

_V = TypeVar("_V")


def mark_dirty(
    dirty: OrderedDict[SeriesKey, _V],
    key: SeriesKey,
    value: _V,
    *,
    limit: int,
    dropped: Counter[str],
) -> None:
    """Put ``key`` at the back of ``dirty``; past ``limit`` the oldest is dropped and counted."""
    dirty[key] = value
    dirty.move_to_end(key)
    if len(dirty) > limit:
        dirty.popitem(last=False)
        dropped["dirty_full"] += 1


class Replication:
    """Changed counters awaiting replication, the hand-over queue and the series map."""

    def __init__(
        self,
        config: NodeConfig,
        counters: CounterStore,
        registry: RuleRegistry,
        link: Link,
        *,
        stats: Counter[str],
        dropped: Counter[str],
    ) -> None:
        self._config = config
        self._node_id = config.node_id
        self._counters = counters
        self._registry = registry
        self._link = link
        self._stats = stats
        self._dropped = dropped
        #: Window length of every counting series known here, by series name.
        self.series_windows: dict[str, int] = {}
        self._changed: OrderedDict[SeriesKey, None] = OrderedDict()
        self._handover: deque[SeriesKey] = deque()

    def note_rule(self, rule: Rule) -> None:
        """A rule is in use here: its series may be counted, merged and swept."""
        self.series_windows[rule.series] = rule.window_ns

    def mark_changed(self, series: str, client: str) -> None:
        """This node admitted into the counter: replicate it next round."""
        mark_dirty(
            self._changed,
            (series, client),
            None,
            limit=self._config.max_dirty,
            dropped=self._dropped,
        )

    def sweep(self, wall: int) -> None:
        """Forget some counters whose windows have all ended, and the rule registry's
        expired per-call entries and old graves (``RuleRegistry.collect``)."""
        self._counters.sweep(self.series_windows, now_ns=wall)
        self._registry.collect(now_ms=wall // 1_000_000)

    def reset(self, client: str) -> None:
        """An operator reset ``client``: forget its counts here and stop replicating them.
        Slots gossiped later for windows that began before the reset are ignored
        (``merge``), so a grow-only counter cannot bring the old counts back."""
        self._counters.reset(client, list(self.series_windows))
        for series in self.series_windows:
            self._changed.pop((series, client), None)

    # --- sending ----------------------------------------------------------------------

    def slots_of(self, key: SeriesKey, wall: int, *, own_only: bool) -> list[CounterSlot]:
        """A counter as deltas: this node's slot only, or every slot (hand-over)."""
        series, client = key
        counter = self._counters.get(series, client)
        window_ns = self.series_windows.get(series)
        if counter is None or window_ns is None:
            return []
        if series.startswith("token_bucket"):
            return [CounterSlot(client, series, counter.tat, ())]
        slots = []
        for window, gcounter in ((counter.window, counter.cur), (counter.window - 1, counter.prev)):
            items = [(n, c) for n, c in gcounter.items() if not own_only or n == self._node_id]
            if items and window >= 0:
                slots.append(CounterSlot(client, series, window, tuple(items)))
        return slots

    def send_slots(self, by_node: dict[str, list[CounterSlot]]) -> None:
        """Send deltas, split into messages that each fit a datagram."""
        for node, slots in by_node.items():
            for message in codec.fit_items(CounterDeltas, slots, self._link.message_budget):
                self._link.send(node, message)

    def gossip(self, wall: int, ring: HashRing) -> None:
        """Send the counters changed since the last round: to the replicas (strict mode)
        or to everyone (local mode)."""
        if not self._changed:
            return
        changed, self._changed = self._changed, OrderedDict()
        by_node: dict[str, list[CounterSlot]] = {}
        for key in changed:
            targets = self._targets(key[1], ring)
            slots = self.slots_of(key, wall, own_only=True)
            for node in targets:
                by_node.setdefault(node, []).extend(slots)
        self.send_slots(by_node)

    def _targets(self, client: str, ring: HashRing) -> list[str]:
        if self._config.mode == "local":
            return self._link.peers()
        prefs = ring.preference_list(client, 1 + self._config.replicas)
        return [n for n in prefs if n != self._node_id]

    # --- hand-over --------------------------------------------------------------------

    def restart_handover(self, ring: HashRing, wall: int) -> None:
        """The ring changed or a member (re)joined: queue every counter for its holders in
        ``ring`` and send the first round now, not at the next gossip round (a new or
        restarted member may start deciding at once, and needs its own old slot back)."""
        self._handover.clear()
        self._queue_everything()
        self.continue_handover(wall, ring)

    def hand_over_everything(self, ring: HashRing, wall: int) -> None:
        """Leaving: send every counter to its holders in ``ring`` (the ring without us) now."""
        self._queue_everything()
        self.continue_handover(wall, ring, budget=len(self._handover))

    def _queue_everything(self) -> None:
        for key, _ in self._counters.items():
            self._handover.append(key)

    def continue_handover(
        self, wall: int, ring: HashRing, *, budget: int = HANDOVER_BUDGET
    ) -> None:
        """Send up to ``budget`` queued counters, every slot, to their holders in ``ring``."""
        if not self._handover:
            return
        by_node: dict[str, list[CounterSlot]] = {}
        for _ in range(min(budget, len(self._handover))):
            key = self._handover.popleft()
            targets = self._targets(key[1], ring)
            slots = self.slots_of(key, wall, own_only=False)
            for node in targets:
                by_node.setdefault(node, []).extend(slots)
        self.send_slots(by_node)

    # --- receiving --------------------------------------------------------------------

    def merge(self, message: CounterDeltas, wall: int) -> None:
        """Merge a peer's deltas, skipping unknown series and state from before a reset."""
        for slot in message.deltas:
            window_ns = self.series_windows.get(slot.series) or self._learn_series(slot.series)
            if window_ns is None:
                self._dropped["unknown_series"] += 1
                continue
            reset_ms = self._registry.reset_wall_ms(slot.client)
            if reset_ms >= 0 and not _after_reset(slot, window_ns, reset_ms):
                self._stats["stale_after_reset"] += 1
                continue
            if slot.series.startswith("token_bucket"):
                self._counters.merge_tat(slot.client, slot.series, slot.window)
            else:
                self._counters.merge(
                    slot.client, slot.series, slot.window, slot.slots, wall // window_ns
                )

    def _learn_series(self, series: str) -> int | None:
        """A series named by a peer: ``algo:window_ns``; refuse anything malformed."""
        algo, _, window = series.partition(":")
        if not window.isdigit() or algo not in ("sliding_window", "fixed_window", "token_bucket"):
            return None
        window_ns = int(window)
        Rule(1, window_ns, 0, algo)  # validates the window
        if len(self.series_windows) > MAX_SERIES:
            return None
        self.series_windows[series] = window_ns
        return window_ns


def _after_reset(slot: CounterSlot, window_ns: int, reset_ms: int) -> bool:
    """Whether gossiped state may be merged after a reset at ``reset_ms``: windows (and
    token-bucket arrival times) from before the reset carry the counts it cleared."""
    reset_ns = reset_ms * 1_000_000
    if slot.series.startswith("token_bucket"):
        # An arrival time does not say when it was earned; one a window past the
        # reset cannot come from before it unless the bucket was deeper than a
        # window (limit + burst > limit): approximate for such rules.
        return slot.window >= reset_ns + window_ns
    return slot.window * window_ns >= reset_ns
