"""Replication: counter deltas to the replicas, hand-over, and merging what peers send.

Theory of operation. A counter this node admits into is marked changed; every gossip
round (``gossip``) sends this node's own slots of the changed counters to the client's
ring successors (strict mode: the owner's replicas) or to every peer (local mode), so
a new owner takes over with the counts. When the ring changes, or a member joins or
restarts, the counters held here whose holders changed are queued for hand-over
(``queue_handover``): those whose preference list (owner and replicas) gained a member
or changed owner, for the new holders only, and those a rejoined member holds, for it.
All slots, not only ours, go, paced: at most ``HANDOVER_PER_S`` counters a second and
``handover_bytes_per_round`` bytes a gossip round, so a ring change moves ~1/n of the
counters and never floods the links that probes share. Finding them is paced too
(``HANDOVER_SCAN_PER_S`` counters examined a second, whatever the gossip interval), so
it never stalls the node, however often the ring changes: a flapping member must not
turn into a node busy scanning its counters, whose late acks breed the next suspicion.
On a graceful leave everything goes at once to the holders in the ring without this
node (``hand_over_everything``).

Incoming deltas (``merge``) merge slot by slot (G-counters: per-slot max, so loss,
duplication and reordering are harmless), except for windows that began before an
operator reset the client: a grow-only counter would otherwise bring the cleared
counts back (``reset``, ``_after_reset``).

The series window map (``series_windows``: counting series name -> window length)
lives here: it names what may be merged, swept and gossiped. Rules noted by rule sync
add to it; series named by a peer are learned if well-formed, up to a bound.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from meshlimit.cluster.node.config import NodeConfig, per_round
from meshlimit.cluster.node.link import Link
from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.messages import CounterDeltas, CounterSlot
from meshlimit.core.counters import CounterStore
from meshlimit.core.registry import RuleRegistry
from meshlimit.core.ring import HashRing
from meshlimit.core.rules import Rule

#: A counter's key: ``(series, client)``.
SeriesKey = tuple[str, str]
#: Most counters handed over per second after a ring change (``handover_budget``; and at
#: most ``NodeConfig.handover_bytes_per_round`` bytes a round). Why 10,000: sending one
#: costs ~10-15 us of encoding, so a hand-over takes at most ~15% of a core however
#: often the ring changes, and the ~1/n of 100k counters that move go within seconds.
HANDOVER_PER_S = 10_000
#: Fewest counters handed over per gossip round, however short the round.
HANDOVER_MIN = 100
#: Counters a hand-over scan examines per second of gossip rounds (``scan_budget``). Why
#: 20,000: examining one costs a ring lookup or two (~5-10 us), so a scan takes at most
#: ~15% of a core however often the ring changes, and 100k counters are examined in 5 s.
HANDOVER_SCAN_PER_S = 20_000
#: Fewest counters a hand-over scan examines per gossip round, however short the round.
HANDOVER_SCAN_MIN = 256
#: Byte budget of the hand-over on a graceful leave: everything, at once.
MAX_HANDOVER_BYTES = 2**62
#: Encoded size of a delta slot beyond its strings: window, array headers, framing.
SLOT_OVERHEAD_BYTES = 16
#: Encoded size of one (node, count) item beyond the node id.
ITEM_OVERHEAD_BYTES = 11
#: Separates a node id from a reset's tag in a slot name (``epoch_name``): node ids are
#: printable, so it never occurs in one.
EPOCH_SEP = "\x1f"
#: Most series learned from peers' deltas (beyond it, unknown series are dropped).
MAX_SERIES = 1024

_V = TypeVar("_V")
_NOBODY: frozenset[str] = frozenset()


def handover_scan_budget(gossip_interval_ns: int) -> int:
    """Counters a hand-over scan examines per gossip round: ``HANDOVER_SCAN_PER_S`` over the
    rounds of a second, at least ``HANDOVER_SCAN_MIN``."""
    return per_round(HANDOVER_SCAN_PER_S, gossip_interval_ns, HANDOVER_SCAN_MIN)


def handover_budget(gossip_interval_ns: int) -> int:
    """Counters a hand-over sends per gossip round: ``HANDOVER_PER_S`` over the rounds of a
    second, at least ``HANDOVER_MIN``."""
    return per_round(HANDOVER_PER_S, gossip_interval_ns, HANDOVER_MIN)


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
        #: Counters awaiting hand-over, oldest first, with the holders each is due to.
        self._handover: OrderedDict[SeriesKey, frozenset[str]] = OrderedDict()
        self._scan: _Scan | None = None  # counters still to examine for hand-over
        #: Members whose hand-over runs (a new member, or one back alive, perhaps a new
        #: life), with the slots sent them so far: told ``HandoverDone`` once it ends.
        self._syncing: dict[str, int] = {}
        self._owed: Counter[str] = Counter()  # queued counters due to each member

    def note_rule(self, rule: Rule) -> None:
        """A rule is in use here: its series (one per limit) may be counted, merged, swept."""
        for limit in rule.limits:
            self.series_windows[limit.series] = limit.window_ns

    def mark_changed(self, series: str, client: str) -> None:
        """This node admitted into the counter: replicate it next round."""
        # ``mark_dirty`` inlined: this runs on every admitted check.
        changed, key = self._changed, (series, client)
        changed[key] = None
        changed.move_to_end(key)
        if len(changed) > self._config.max_dirty:
            changed.popitem(last=False)
            self._dropped["dirty_full"] += 1

    def sweep(self, wall: int) -> None:
        """Forget some counters whose windows have all ended, and the rule registry's
        expired per-call entries and old graves (``RuleRegistry.collect``)."""
        self._counters.sweep(self.series_windows, now_ns=wall)
        self._registry.collect(now_ms=wall // 1_000_000)

    def reset(self, client: str) -> None:
        """An operator reset ``client``: forget its counts from before the reset here and
        stop replicating them. Slots gossiped later for windows that began before the reset
        are ignored (``merge``), so a grow-only counter cannot bring the old counts back;
        windows begun since it stay, so a reset arriving late keeps what was admitted since."""
        reset_ms = self._registry.reset_wall_ms(client)
        self._counters.reset(
            client, self.series_windows, reset_ms * 1_000_000 if reset_ms >= 0 else None
        )
        for series in self.series_windows:
            if self._counters.get(series, client) is None:
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
        me = self._node_id
        reset_ms = self._registry.reset_wall_ms(client)
        reset_window = reset_ms * 1_000_000 // window_ns if reset_ms >= 0 else -1
        for window, gcounter in ((counter.window, counter.cur), (counter.window - 1, counter.prev)):
            name = epoch_name(me, reset_ms) if window == reset_window else me
            if own_only:  # one slot: a non-empty one is above 0, so ``get`` tells
                own = gcounter.get(me)
                items: tuple[tuple[str, int], ...] = ((name, own),) if own else ()
            else:
                items = tuple((name if n == me else n, c) for n, c in gcounter.items())
            if items and window >= 0:
                slots.append(CounterSlot(client, series, window, items))
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
            if not targets:
                continue  # nobody to send to: no slots to build
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

    def queue_handover(self, old: HashRing, new: HashRing, rejoined: Iterable[str] = ()) -> None:
        """The ring went from ``old`` to ``new`` and/or members in ``rejoined`` came back
        (alive again, perhaps restarted without memory): each counter held here is to go
        to the holders that should now have it and may not. In strict mode those are the
        members of its preference list (owner and replicas) in ``new`` that were not in
        it in ``old``, its new owner if the owner changed, and the rejoined ones in it; in
        local mode, the new and rejoined members. Counters whose holders did not change
        stay put (a ring change among n members moves ~1/n of them).

        The counters are examined ``scan_budget`` a round (``continue_handover``),
        so a change never stalls the node. One scan runs at a time: a change during one
        restarts it over both changes (``old`` of the first, ``new`` of the last)."""
        back = frozenset(rejoined) - {self._node_id}
        for node in sorted((new.nodes - old.nodes - {self._node_id}) | back):  # reproducible
            self._syncing.setdefault(node, 0)
        scan = self._scan
        if scan is not None:
            old, back = scan.old, back | scan.back
        self._scan = _Scan(old, new, back, self._counters.keys())

    def scan_budget(self) -> int:
        """Counters a hand-over scan examines per gossip round (``handover_scan_budget``)."""
        return handover_scan_budget(self._config.gossip_interval_ns)

    def _scan_some(self, budget: int) -> None:
        """Examine up to ``budget`` more counters of the running scan, queueing those due."""
        scan = self._scan
        if scan is None:
            return
        me = self._node_id
        local = self._config.mode == "local"
        width = 1 + self._config.replicas
        same_ring = scan.old.nodes == scan.new.nodes
        newcomers = (scan.new.nodes - scan.old.nodes - {me}) | scan.back
        stop = min(len(scan.keys), scan.at + budget)
        queued = 0
        for key in scan.keys[scan.at : stop]:
            client = key[1]
            wanted = scan.by_client.get(client)
            if wanted is None:
                if local:
                    wanted = newcomers
                else:
                    wanted = _due(
                        scan.old, scan.new, client, width, me, scan.back, same_ring=same_ring
                    )
                scan.by_client[client] = wanted
            if wanted:
                self._enqueue(key, wanted)
                queued += 1
        scan.at = stop
        self._stats["handover_queued"] += queued
        if stop >= len(scan.keys):
            self._scan = None

    def _enqueue(self, key: SeriesKey, targets: frozenset[str]) -> None:
        """Queue ``key`` for ``targets`` (joined with any holders it already awaits)."""
        waiting = self._handover.get(key)
        self._owed.update(targets if waiting is None else targets - waiting)
        self._handover[key] = targets if waiting is None else waiting | targets

    def handover_backlog(self) -> int:
        """Counters queued for hand-over or not yet examined."""
        scan = self._scan
        return len(self._handover) + (0 if scan is None else len(scan.keys) - scan.at)

    def hand_over_everything(self, ring: HashRing, wall: int) -> None:
        """Leaving: send every counter to its holders in ``ring`` (the ring without us) now,
        whatever the pace (the process is about to stop)."""
        self._scan = None
        for key, _ in self._counters.items():
            targets = frozenset(self._targets(key[1], ring))
            if targets:
                self._enqueue(key, targets)
        self.continue_handover(
            wall, ring, budget=len(self._handover), byte_budget=MAX_HANDOVER_BYTES
        )

    def continue_handover(
        self,
        wall: int,
        ring: HashRing,
        *,
        budget: int | None = None,
        byte_budget: int | None = None,
    ) -> None:
        """Send queued counters, every slot, to the holders they were queued for that still
        hold them in ``ring``: up to ``budget`` counters (default: ``handover_budget``) and
        ``byte_budget`` bytes (default: ``handover_bytes_per_round``), oldest first, at least one; first examine the next
        ``scan_budget()`` counters of a running scan (``queue_handover``)."""
        self._scan_some(self.scan_budget())
        if not self._handover:
            return
        if budget is None:
            budget = handover_budget(self._config.gossip_interval_ns)
        bytes_left = self._config.handover_bytes_per_round if byte_budget is None else byte_budget
        local = self._config.mode == "local"
        live = frozenset(self._link.peers()) if local else frozenset()
        by_node: dict[str, list[CounterSlot]] = {}
        sent = 0
        while self._handover and sent < budget:
            key, targets = next(iter(self._handover.items()))
            holders = live if local else self._targets(key[1], ring)
            nodes = sorted(n for n in targets if n in holders)  # not set order: reproducible
            slots = self.slots_of(key, wall, own_only=False) if nodes else []
            size = sum(_slot_bytes(slot) for slot in slots) * len(nodes)
            if sent and size > bytes_left:
                break
            del self._handover[key]
            self._owed.subtract(targets)
            sent += 1
            bytes_left -= size
            self._stats["handover_bytes"] += size
            for node in nodes:
                by_node.setdefault(node, []).extend(slots)
                if node in self._syncing:
                    self._syncing[node] += handed_over(slots, self._node_id)
        self._stats["handover_sent"] += sent
        self.send_slots(by_node)

    def finished_syncs(self) -> list[tuple[str, int]]:
        """Members whose hand-over just ended (no scan running, nothing queued for them),
        with the counter slots sent them: each is to be told ``HandoverDone``."""
        if self._scan is not None or not self._syncing:
            return []
        done = [(n, slots) for n, slots in self._syncing.items() if self._owed[n] <= 0]
        for node, _ in done:
            del self._syncing[node]
            self._owed.pop(node, None)
        return done

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
                slot = self._since_reset(slot, window_ns, reset_ms)
                if not slot.slots:
                    self._stats["stale_after_reset"] += 1
                    continue
            if slot.series.startswith("token_bucket"):
                self._counters.merge_tat(slot.client, slot.series, slot.window)
            else:
                self._counters.merge(
                    slot.client,
                    slot.series,
                    slot.window,
                    slot.slots,
                    wall // window_ns,
                    self._numbers,
                )

    def _since_reset(self, slot: CounterSlot, window_ns: int, reset_ms: int) -> CounterSlot:
        """Of a slot for a window begun before the client's reset, what counts since it:
        in the window the reset fell in, peers' slots named for it (``epoch_name``), made
        after they applied it; nothing older, and never our own (we hold it unnamed)."""
        if slot.series.startswith("token_bucket") or slot.window != reset_ms * 1_000_000 // (
            window_ns
        ):
            return CounterSlot(slot.client, slot.series, slot.window, ())
        tag = epoch_name("", reset_ms)
        mine = self._node_id + tag
        kept = tuple((n, c) for n, c in slot.slots if n.endswith(tag) and n != mine)
        return CounterSlot(slot.client, slot.series, slot.window, kept)

    def _numbers(self, series: str, client: str) -> tuple[int, int]:
        """``(limit, burst)`` that the rule in force for ``client`` gives ``series``."""
        for limit in self._registry.resolve(client).limits:
            if limit.series == series:
                return limit.limit, limit.burst
        return 0, 0

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


@dataclass(slots=True)
class _Scan:
    """A hand-over scan in progress: the counters held when the ring went from ``old`` to
    ``new`` (``back``: members that came back), examined ``keys[at:]`` next."""

    old: HashRing
    new: HashRing
    back: frozenset[str]
    keys: list[SeriesKey]
    at: int = 0
    by_client: dict[str, frozenset[str]] = field(default_factory=dict)


def _due(
    old: HashRing,
    new: HashRing,
    client: str,
    width: int,
    me: str,
    back: frozenset[str],
    *,
    same_ring: bool,
) -> frozenset[str]:
    """The holders of ``client`` in ``new`` that may lack its counts (strict mode): new in
    its preference list, its new owner (a replica promoted decides from now on), and
    members that came back (they may have lost what they held)."""
    after = new.preference_list(client, width)
    before = after if same_ring else old.preference_list(client, width)
    if before == after:  # the same holders: only those that came back need it again
        return back.intersection(after) if back else _NOBODY
    return frozenset(
        n
        for i, n in enumerate(after)
        if n != me and (n not in before or n in back or (i == 0 and before[0] != n))
    )


def handed_over(slots: Iterable[CounterSlot], sender: str) -> int:
    """How many of ``slots`` from ``sender`` only a hand-over sends: those naming another
    node's count (replication and degraded reports carry the sender's own alone). The
    receiver of a ``HandoverDone`` counts the same way."""
    own = sender + EPOCH_SEP
    return sum(
        1 for slot in slots if any(n != sender and not n.startswith(own) for n, _ in slot.slots)
    )


def epoch_name(node: str, reset_ms: int) -> str:
    """``node``'s slot name in the window an operator reset at ``reset_ms`` fell in: the
    counts a node sends of that window are those it made since it applied the reset (it
    forgot the rest), and only slots so named merge there (``Replication.merge``)."""
    return f"{node}{EPOCH_SEP}{reset_ms & 0xFFFFFF:x}"


def _slot_bytes(slot: CounterSlot) -> int:
    """About how many bytes ``slot`` takes in a datagram (pacing, not framing)."""
    items = sum(len(node) + ITEM_OVERHEAD_BYTES for node, _ in slot.slots)
    return len(slot.client) + len(slot.series) + SLOT_OVERHEAD_BYTES + items


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
