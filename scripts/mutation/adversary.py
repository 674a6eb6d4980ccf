"""Planted bugs written as an adversary would: the next slips after :mod:`mutation.more`.

Each is one small, realistic bug, different from the 47 before it: a retry under a fresh
request id, a reply matched by its place in the queue, a cost the owner drops, a cache of
admissions only, the wrong member of a preference list, ``replicas`` read without the
owner, a merge that adds, the sliding weight of the wrong part of the window, windows by
the monotonic clock, one token too many, suspicions halved or always at their longest, a
dead member revived by its own old news, a probe target that never rotates, HLC ties
broken the wrong way, a removal losing to an older write, a clock offset not halved, a
reset kept by the owner alone or spread to every client, degraded shares rounded up, a
majority without the reaped dead, a resync ended by the first peer and a joining node
that forgets to count itself. Every one is caught by a shipped scenario or the default
fuzz (``scripts/mutants.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from meshlimit.cluster.node import Node
from mutation.catalogue import _LIVE, Mutant, Patch, _wrap

# --- forwarding and de-duplication ------------------------------------------------------


def _plant_retry_fresh_id(node: Node) -> None:
    """A timed-out check sent once more goes out under a fresh request id (the next ticket),
    while the node still waits under the old one: the owner cannot tell the two sendings
    apart, counts the check twice when only its reply was lost, and the reply to the
    second sending resolves nothing."""
    from meshlimit.cluster.node.forwarding import _SEQ_MASK, SEQ_BITS

    forwarding = node.forwarding

    def retry(ticket: int, request: Any, now_ns: int) -> None:
        request.retried = True
        request.sent_ns, request.deadline_ns = now_ns, now_ns + forwarding.timeout_ns()
        forwarding.pending[ticket] = request
        forwarding._stats["forward_retries"] += 1
        fresh = forwarding._life << SEQ_BITS | forwarding._seq
        forwarding._seq = (forwarding._seq + 1) & _SEQ_MASK
        forwarding._queue(fresh, request.client, request.cost, request.owner, now_ns)

    forwarding.retry = retry  # type: ignore[method-assign]


def _plant_reply_matched_by_order(node: Node) -> None:
    """A reply whose request id is not pending (a duplicate, a late one) answers the oldest
    check pending at the same owner instead: replies matched by their place in the queue,
    not by id."""
    forwarding = node.forwarding

    def make(resolve: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(sender: str, message: Any, now_ns: int, window_of: Any = None) -> Any:
            results = []
            taken: set[int] = set()
            for result in message.results:
                pending = forwarding.pending.get(result.request_id)
                if pending is None or pending.owner != sender:
                    oldest = next(
                        (
                            t
                            for t, p in forwarding.pending.items()
                            if p.owner == sender and t not in taken
                        ),
                        None,
                    )
                    if oldest is not None:
                        result = replace(result, request_id=oldest)
                taken.add(result.request_id)
                results.append(result)
            return resolve(sender, replace(message, results=tuple(results)), now_ns, window_of)

        return wrapped

    _wrap(forwarding, "resolve", make)


def _plant_owner_cost_ignored(node: Node) -> None:
    """The owner decides every forwarded check at cost 1 (the batch's cost column read as a
    flag): a heavy request forwarded to its owner spends one unit."""

    def make(answer: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(sender: str, reply_to: Any, message: Any, wall: int, decide: Any) -> None:
            def one(client: str, cost: int, wall_ns: int, path: str) -> Any:
                return decide(client, min(cost, 1), wall_ns, path)

            answer(sender, reply_to, message, wall, one)

        return wrapped

    _wrap(node.forwarding, "answer", make)


class _AdmissionsOnly(OrderedDict[int, Any]):
    """An answer cache that keeps admissions only (``seen[id] = result`` when allowed)."""

    def __setitem__(self, key: int, value: Any) -> None:
        if value.allowed:
            super().__setitem__(key, value)


def _plant_dedup_admissions_only(node: Node) -> None:
    """The owner caches only the checks it admitted ("a refusal costs nothing, so replaying
    it is pointless"): a duplicated refused check is decided again -- and admitted, if room
    opened meanwhile."""
    forwarding = node.forwarding

    def make(answers_of: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(sender: str, life: int) -> Any:
            seen = answers_of(sender, life)
            if not isinstance(seen, _AdmissionsOnly):
                seen = forwarding._dedup[(sender, life)] = _AdmissionsOnly(seen)
            return seen

        return wrapped

    _wrap(forwarding, "_answers_of", make)


# --- replication and hand-over ----------------------------------------------------------


def _plant_handover_skips_new_owner(node: Node) -> None:
    """Holders are the preference list after its first entry ("the first is us, the owner"):
    the owner's gossip is unchanged, but a hand-over never reaches a client's new owner."""
    replication = node.replication
    me = node.node_id

    def targets(client: str, ring: Any) -> list[str]:
        if replication._config.mode == "local":
            return replication._link.peers()
        prefs = ring.preference_list(client, 1 + replication._config.replicas)
        return [n for n in prefs[1:] if n != me]

    replication._targets = targets  # type: ignore[method-assign]


def _plant_replicas_without_owner(node: Node) -> None:
    """The preference list is ``replicas`` long, not ``1 + replicas``: with one replica the
    list is the owner alone, and nobody else holds the owner's counts."""
    replication = node.replication
    me = node.node_id

    def targets(client: str, ring: Any) -> list[str]:
        if replication._config.mode == "local":
            return replication._link.peers()
        prefs = ring.preference_list(client, max(1, replication._config.replicas))
        return [n for n in prefs if n != me]

    replication._targets = targets  # type: ignore[method-assign]


def _patch_merge_adds() -> list[Patch]:
    """A merged slot is added to the one held, not maxed with it (deltas read as
    increments): every re-sent, duplicated or handed-over slot counts again."""
    from meshlimit.core.counters import ClientCounter

    def merge_window(
        self: ClientCounter, window: int, node: str, count: int, now_idx: int, numbers: Any = (0, 0)
    ) -> bool:
        self.roll(now_idx, *numbers)
        held = self.cur if window == self.window else self.prev
        if window not in (self.window, self.window - 1) or count <= 0:
            return False
        return bool(held.merge_slot(node, held.get(node) + count))

    return [(ClientCounter, "merge_window", merge_window)]


# --- window arithmetic and burst carry --------------------------------------------------


def _patch_sliding_weight_elapsed() -> list[Patch]:
    """The sliding window weighs the previous window by the part of the current one gone
    by, not the part left (``elapsed`` for ``window - elapsed``)."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import sliding_window as original

    def sliding_window(*args: Any) -> Any:
        *head, window_ns, cost, now_ns = args
        start, elapsed = now_ns - now_ns % window_ns, now_ns % window_ns
        return original(*head, window_ns, cost, start + window_ns - 1 - elapsed)

    return [(counters, "sliding_window", sliding_window)]


def _plant_window_from_monotonic(node: Node) -> None:
    """Windows are indexed by the monotonic clock, not the wall clock (``now_ns`` passed
    where ``wall`` was meant): a node whose wall clock is skewed counts its clients in
    windows no other node uses."""

    def make(decide: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(client: str, cost: int, wall: int, path: str) -> Any:
            return decide(client, cost, wall - node._wall_offset, path)

        return wrapped

    _wrap(node, "_decide_here", make)


def _patch_token_bucket_extra_token() -> list[Patch]:
    """The token bucket's depth is ``limit + burst + 1`` (a ``<`` read as ``<=`` one
    interval late): one request more than the rule after every idle spell."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import token_bucket as original

    def token_bucket(tat: int, limit: int, burst: int, *rest: Any) -> Any:
        return original(tat, limit, burst + 1, *rest)

    return [(counters, "token_bucket", token_bucket)]


# --- membership -------------------------------------------------------------------------


def _patch_suspicion_halved() -> list[Patch]:
    """The base suspicion timeout is half the formula's (``probe_interval / 2`` for the
    interval): a confirmed suspicion declares its member dead in half the time."""
    from meshlimit.cluster.membership import members
    from meshlimit.cluster.membership.timing import suspicion_timeout_ns as original

    return [(members, "suspicion_timeout_ns", lambda config, n: original(config, n) // 2)]


def _plant_suspicion_always_longest(node: Node) -> None:
    """Every suspicion runs its longest (Lifeguard's min set to its max): confirmations
    never shorten it, so a crash is declared dead six base timeouts late."""
    table = node.membership._table
    table._awareness.suspicion_min_ns = lambda base, longest: longest  # type: ignore[method-assign]


def _plant_dead_revived_same_incarnation(node: Node) -> None:
    """News that a member is alive at the incarnation it died at revives it (``!=`` for
    ``>`` on the state at equal incarnations): an old rumour undoes a death."""
    from meshlimit.cluster.wire.messages import MemberState

    table = node.membership._table

    def make(apply: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(u: Any, sender: str, now: int, **kwargs: Any) -> None:
            m = table.members.get(u.node)
            if (
                m is not None
                and u.node != table.node_id
                and u.incarnation == m.incarnation
                and m.state == MemberState.DEAD
                and u.state == MemberState.ALIVE
            ):
                table.change(m, u, sender, now)
                return
            apply(u, sender, now, **kwargs)

        return wrapped

    _wrap(table, "apply", make)


def _patch_probe_target_fixed() -> list[Patch]:
    """The probe order never moves on (its index is not advanced): a node probes the same
    member for as long as it lives, and a crash of any other goes unseen by it."""
    from meshlimit.cluster.membership.probes import ProbeOrder

    original = ProbeOrder.next_target

    def next_target(self: ProbeOrder, members: Any, self_id: str) -> str | None:
        target = original(self, members, self_id)
        if target is not None:
            self._index -= 1
        return target

    return [(ProbeOrder, "next_target", next_target)]


# --- rules, clocks, resets --------------------------------------------------------------


def _patch_hlc_tie_reversed() -> list[Patch]:
    """Stamps equal in wall time and counter break the tie on the node id the wrong way
    round: every node agrees, but on the older write of the HLC order."""
    from meshlimit.core import registry

    original = registry._newer

    def newer(value: Any, stamp: Any, current: Any) -> bool:
        held = current.stamp
        if stamp[:2] == held[:2] and stamp.node != held.node:
            return bool(stamp.node < held.node)
        return bool(original(value, stamp, current))

    return [(registry, "_newer", newer)]


def _patch_remove_loses_to_older_set() -> list[Patch]:
    """A removed entry (a grave) is treated as no entry: any write for the key replaces
    it, an older one too, so a rule removed comes back from a peer that had it."""
    from meshlimit.core import registry

    original = registry._newer

    def newer(value: Any, stamp: Any, current: Any) -> bool:
        if current.value is None and value is not None:
            return True
        return bool(original(value, stamp, current))

    return [(registry, "_newer", newer)]


def _plant_clock_offset_not_halved(node: Node) -> None:
    """A peer's clock offset is measured against our clock when the probe left, not at the
    middle of the round trip (``echo`` for ``(echo + now) / 2``): off by half a round trip."""
    clocks = node.membership._clocks

    def make(sample: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(peer: str, rtt_ns: int, offset_ns: int) -> None:
            sample(peer, rtt_ns, offset_ns + rtt_ns // 2)

        return wrapped

    _wrap(clocks, "sample", make)


def _plant_reset_owner_only(node: Node) -> None:
    """An operator reset clears the counts on the client's owner only ("only the owner
    decides"): its replicas keep the old counts, and take over with them."""

    apply_reset = node.rules._on_reset

    def on_reset(client: str) -> None:
        if node.ring.owner(client) == node.node_id:
            apply_reset(client)

    node.rules._on_reset = on_reset


def _patch_reset_clears_series() -> list[Patch]:
    """An operator reset of one client clears every client's counters in the series it
    touches (the loop's key test dropped): every client starts again from zero."""
    from meshlimit.core.counters import CounterStore

    original = CounterStore.reset

    def reset(
        self: CounterStore, client: str, windows: dict[str, int], reset_ns: int | None = None
    ) -> int:
        gone = int(original(self, client, windows, reset_ns))
        touched = {series for series, _ in self._counters if series in windows}
        for key in [k for k in self._counters if k[0] in touched and k[1] != client]:
            del self._counters[key]
            gone += 1
        return gone

    return [(CounterStore, "reset", reset)]


# --- degraded quota, majority rule, resync, joining -------------------------------------


def _patch_degraded_share_rounds_up() -> list[Patch]:
    """Every degraded node takes ``ceil(units / members)`` (``local_quota``, the bound, for
    the deal): the shares sum to more than the units whenever they do not divide evenly."""
    from meshlimit.cluster.node import degraded
    from meshlimit.cluster.node.config import local_quota

    def share(capacity: int, fraction: float, *, members: int, **_: Any) -> int:
        return int(local_quota(capacity, members, fraction))

    return [(degraded, "degraded_share", share)]


def _plant_majority_without_roster(node: Node) -> None:
    """The majority is taken of the member table alone, not the quorum: once a minority has
    reaped the members it cannot reach, it takes itself for the whole cluster."""
    from meshlimit.cluster.wire.messages import MemberState

    degraded = node.degraded

    def make(observe: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(membership: Any, states: dict[str, int], *, joined: bool) -> None:
            observe(membership, states, joined=joined)
            table = [n for n, s in states.items() if s != MemberState.LEFT]
            live = sum(1 for n in table if states[n] in _LIVE)
            expected = node.config.expected_members
            degraded.majority = joined and 2 * live > max(len(table), expected)

        return wrapped

    _wrap(degraded, "observe", make)


def _plant_resync_first_done(node: Node) -> None:
    """A restarted node stops waiting for its counts when the first peer is done ("any" for
    "all"): the replica that holds them may still be handing them back."""
    resync = node.resync

    def make(done_with: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(sender: str) -> None:
            before = len(resync._awaited)
            done_with(sender)
            if len(resync._awaited) < before:
                resync._awaited.clear()
                resync._settle()

        return wrapped

    _wrap(resync, "_done_with", make)


def _plant_joining_forgets_itself(node: Node) -> None:
    """A node still joining deals the degraded units over its seeds, not its seeds and
    itself (nor at least two): with one seed it takes every unit."""
    import mmh3

    degraded = node.degraded

    def unknown_place(seeds: int) -> tuple[int, int]:
        members = max(seeds, 1, node.config.expected_members)
        return members, mmh3.hash(node.node_id, signed=False) % members

    degraded._unknown_place = unknown_place  # type: ignore[method-assign]
    degraded.members, degraded.position = unknown_place(0)


class _NeverHeldBack(set[str]):
    """A set that takes nothing in: no member is ever held back as unconfirmed."""

    def add(self, element: str) -> None:
        pass


def _plant_news_counts_live(node: Node) -> None:
    """A member back from the dead counts live for the majority on the news alone (no ack
    of ours needed): news over a one-way cut makes a cut-off node take itself for a
    majority."""
    node.membership._table.unconfirmed = _NeverHeldBack()
    node.membership._table.newcomers = _NeverHeldBack()


ADVERSARY_MUTANTS: tuple[Mutant, ...] = (
    Mutant("news_counts_live", "majority rule",
           "a member back from the dead counts live for the majority on the news alone",
           ("one_way_comeback",),
           plant=_plant_news_counts_live),
    Mutant("retry_fresh_id", "forwarding",
           "a timed-out check is sent again under a fresh request id",
           ("loss_20pct", "duplication_reordering", "flapping_link"),
           plant=_plant_retry_fresh_id),
    Mutant("reply_matched_by_order", "forwarding",
           "a reply to no pending check answers the oldest check pending at that owner",
           ("duplication_reordering", "loss_20pct", "misdelivery"),
           plant=_plant_reply_matched_by_order),
    Mutant("owner_cost_ignored", "forwarding",
           "the owner decides every forwarded check at cost 1",
           ("weighted_costs", "healthy"), plant=_plant_owner_cost_ignored),
    Mutant("dedup_admissions_only", "de-duplication",
           "the owner's answer cache keeps admissions only: a duplicated refusal is decided again",
           ("duplication_reordering", "hot_client"), plant=_plant_dedup_admissions_only),
    Mutant("handover_skips_new_owner", "hand-over",
           "holders are the preference list after its first entry: the new owner gets nothing",
           ("join_under_load", "join_leave", "rolling_restart"),
           plant=_plant_handover_skips_new_owner),
    Mutant("replicas_without_owner", "replication",
           "the preference list is `replicas` long: with one replica nobody else holds counts",
           ("owner_crash", "rolling_restart"), plant=_plant_replicas_without_owner),
    Mutant("merge_adds", "replication",
           "a merged slot is added to the one held instead of maxed with it",
           ("owner_crash", "join_under_load", "healthy"), patches=_patch_merge_adds),
    Mutant("sliding_weight_elapsed", "window arithmetic",
           "the previous window is weighted by the part of the window gone, not the part left",
           ("healthy", "hot_client"), patches=_patch_sliding_weight_elapsed),
    Mutant("window_from_monotonic", "window arithmetic",
           "windows are indexed by the monotonic clock, not the wall clock",
           ("clock_skew",), plant=_plant_window_from_monotonic),
    Mutant("token_bucket_extra_token", "burst carry",
           "the token bucket holds one token more than limit + burst",
           ("token_bucket_hot",), patches=_patch_token_bucket_extra_token),
    Mutant("suspicion_halved", "membership: suspicion",
           "the base suspicion timeout is half the formula's",
           ("owner_crash", "rolling_restart", "lossy_then_clean"),
           patches=_patch_suspicion_halved),
    Mutant("suspicion_always_longest", "membership: suspicion",
           "every suspicion runs its longest: confirmations never shorten it",
           ("three_node_crash", "owner_crash"), plant=_plant_suspicion_always_longest),
    Mutant("dead_revived_same_incarnation", "membership: dead",
           "news of a member alive at the incarnation it died at revives it",
           ("owner_crash", "restart_before_reap", "rolling_restart"),
           plant=_plant_dead_revived_same_incarnation),
    Mutant("probe_target_fixed", "membership: probes",
           "the probe order never advances: a node probes one member for good",
           ("owner_crash", "rolling_restart"), patches=_patch_probe_target_fixed),
    Mutant("hlc_tie_reversed", "rule ordering",
           "stamps equal in time and counter break the tie on node id the wrong way",
           ("rule_races", "concurrent_rule_writes"), patches=_patch_hlc_tie_reversed),
    Mutant("remove_loses_to_older_set", "rule ordering",
           "a removed entry is as good as none: an older write brings the rule back",
           ("rule_races", "rule_change_storm"),
           patches=_patch_remove_loses_to_older_set),
    Mutant("clock_offset_not_halved", "clock offsets",
           "a peer's clock offset is taken against the probe's start, not its midpoint",
           ("slow_links", "clock_skew"), plant=_plant_clock_offset_not_halved),
    Mutant("reset_owner_only", "resets",
           "an operator reset clears the counts on the owner only, not its replicas",
           ("reset_during_partition", "operator_reset"), plant=_plant_reset_owner_only),
    Mutant("reset_clears_series", "resets",
           "a reset of one client clears every client's counters in its series",
           ("operator_reset", "reset_during_partition"), patches=_patch_reset_clears_series),
    Mutant("degraded_share_rounds_up", "degraded quota",
           "every degraded node takes ceil(units / members)",
           ("minority_partition", "owner_crash", "edge_small_limit_degraded"),
           patches=_patch_degraded_share_rounds_up),
    Mutant("majority_without_roster", "majority rule",
           "the majority is taken of the member table, without the reaped dead",
           ("edge_restart_in_minority", "minority_partition"),
           plant=_plant_majority_without_roster),
    Mutant("resync_first_done", "hand-over to a restarted node",
           "a restarted node stops waiting for its counts when the first peer is done",
           ("restart_replica_paused", "fast_restart_owner"), plant=_plant_resync_first_done),
    Mutant("joining_forgets_itself", "joining before ring known",
           "a node still joining deals the degraded units over its seeds, not seeds + itself",
           ("edge_serve_before_join", "join_under_load"), plant=_plant_joining_forgets_itself),
)  # fmt: skip
