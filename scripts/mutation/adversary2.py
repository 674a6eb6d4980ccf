"""Planted bugs written as a reviewer would, after the 73 before them.

Each is one small, realistic slip, different from those of :mod:`mutation.catalogue`,
:mod:`mutation.more`, :mod:`mutation.adversary` and :mod:`mutation.stale_state`: a
comparison one off at a window's boundary, a weight rounded down, a merge that drops the
previous window or winds a token bucket back, an idle bucket that banks credit, a
refutation that does not outbid the rumour, a stamp reused within a millisecond, a reset
that keeps its window, a dedup cache that evicts its newest answer, a degraded deal of the
wrong window, a split list that loses its last message. Each is caught by a shipped
scenario or the default fuzz (``scripts/mutants.py``). Written with fifteen more that were
missed; what each of those took, or why it is within the documented bounds:
``docs/simulator.md``, "Planted bugs".

Mutants that change an algorithm turn the fused fast path off (``deciding.admit_counter``
answers None, so every check takes ``CounterStore.check``, which ``tests/test_fastpath.py``
holds it equal to) and patch the algorithm where the store looks it up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshlimit.cluster.node import Node
from mutation.catalogue import Mutant, Patch, _wrap

# --- helpers ---------------------------------------------------------------------------


def _no_fastpath() -> list[Patch]:
    """The fused admission path off: every check goes through ``CounterStore.check``."""
    from meshlimit.cluster.node import deciding

    return [(deciding, "admit_counter", lambda *args: None)]


# --- window arithmetic and burst carry -------------------------------------------------


def _patch_fixed_window_strict_boundary() -> list[Patch]:
    """The fixed window admits while ``cost < room`` (``<`` for ``<=``): the last unit of
    every window is refused."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import fixed_window as original

    def fixed_window(idx: int, cur: int, prev: int, carry: int, limit: int, *rest: Any) -> Any:
        burst, window_ns, cost, now_ns = rest
        out = original(idx, cur, prev, carry, limit, burst, window_ns, cost, now_ns)
        if out[0] and out[5] == 0 and cost > 0:  # exactly filled the room: refuse instead
            return (False, out[1], cur, prev, out[4], 0, out[6], out[6])
        return out

    return _no_fastpath() + [(counters, "fixed_window", fixed_window)]


def _patch_sliding_floor_weight() -> list[Patch]:
    """The sliding window weighs the previous window in whole units, rounded down
    (``prev * rest // W``): a fraction of a request more is admitted near the boundary."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import sliding_window as original

    def sliding_window(
        idx: int, cur: int, prev: int, carry: int, limit: int, burst: int, window_ns: int,
        cost: int, now_ns: int,
    ) -> Any:  # fmt: skip
        rest = window_ns - now_ns % window_ns
        # Shrink prev so that prev' * rest == floor(prev * rest / W) * W, approximately.
        floored = (prev * rest // window_ns) * window_ns
        scaled = floored // rest if rest else prev
        return original(idx, cur, scaled, carry, limit, burst, window_ns, cost, now_ns)

    return _no_fastpath() + [(counters, "sliding_window", sliding_window)]


def _patch_token_bucket_idle_credit() -> list[Patch]:
    """The token bucket never moves an old arrival time up to now (the ``max(tat, now)``
    forgotten): an idle client banks credit without bound."""
    from meshlimit.core import counters

    def token_bucket(
        tat: int, limit: int, burst: int, window_ns: int, cost: int, now_ns: int
    ) -> Any:
        interval = -(-window_ns // limit)
        tolerance = (limit + burst) * interval
        if tat == 0:
            tat = now_ns
        new_tat = tat + cost * interval
        if new_tat - now_ns <= tolerance:
            return True, new_tat, max(0, (tolerance - (new_tat - now_ns)) // interval), 0, 0
        return False, tat, 0, 0, max(1, new_tat - tolerance - now_ns)

    return _no_fastpath() + [(counters, "token_bucket", token_bucket)]


def _patch_merge_tat_overwrites() -> list[Patch]:
    """A gossiped token-bucket arrival time replaces ours even when it is earlier (``=``
    for ``max``): a replica's stale one winds the owner's bucket back."""
    from meshlimit.core.counters import CounterStore

    def merge_tat(self: CounterStore, client: str, series: str, tat: int) -> bool:
        counter = self._counter(series, client, 0)
        if counter is None or tat == counter.tat:
            return False
        counter.tat = tat
        return True

    return [(CounterStore, "merge_tat", merge_tat)]


def _patch_merge_ignores_previous() -> list[Patch]:
    """A merged slot for the previous window is dropped (only ``window == self.window``
    merges): hand-over, replication and degraded reports of the window just ended are lost."""
    from meshlimit.core.counters import ClientCounter

    def merge_window(
        self: ClientCounter, window: int, node: str, count: int, now_idx: int, numbers: Any = (0, 0)
    ) -> bool:
        self.roll(now_idx, *numbers)
        if window == self.window:
            return bool(self.cur.merge_slot(node, count))
        return False

    return [(ClientCounter, "merge_window", merge_window)]


# --- what the client is told -----------------------------------------------------------


# --- membership: suspicion, Lifeguard, roster, refutation -----------------------------


def _plant_refute_not_above_rumour(node: Node) -> None:
    """A refutation bumps our own incarnation by one, not past the rumour's (``own + 1``
    for ``max(own, rumour) + 1``): a rumour of our death at a higher incarnation (a peer
    that knew an earlier life of ours) is never outranked."""
    from meshlimit.cluster.membership.members import ALIVE, LEFT, update_of

    table = node.membership._table
    original = table._about_self

    def about_self(u: Any, *, transfer: bool) -> None:
        me = table.me
        if me.state == LEFT or (transfer and table.fresh):
            original(u, transfer=transfer)
            return
        if u.state == ALIVE and u.incarnation <= me.incarnation:
            return
        me.incarnation += 1
        table._queue.push(update_of(me))
        table._stats["refutations"] += 1
        table._awareness.refuted()

    table._about_self = about_self  # type: ignore[method-assign]


# --- rules and clocks ------------------------------------------------------------------


def _patch_next_stamp_same_ms() -> list[Patch]:
    """A write in the same millisecond as the last stamp restarts its counter (``>=`` for
    ``>``): two writes of one node in one millisecond share a stamp, and the value text,
    not the order of the writes, picks the winner."""
    from meshlimit.cluster.node import rulesync
    from meshlimit.core.hlc import NS_PER_MS, Stamp
    from meshlimit.core.hlc import next_stamp as original

    def next_stamp(last: Stamp, node: str, *, now_ns: int) -> Stamp:
        wall_ms = now_ns // NS_PER_MS
        if wall_ms >= last.wall_ms:
            return Stamp(wall_ms, 0, node)
        return original(last, node, now_ns=now_ns)

    return [(rulesync, "next_stamp", next_stamp)]


# --- resets ------------------------------------------------------------------------------


def _patch_reset_keeps_its_window() -> list[Patch]:
    """A reset arriving late keeps a counter whose window *ends* after the reset (the
    window's end for its start): the counts of the window the reset fell in survive it."""
    from meshlimit.core.counters import CounterStore

    original = CounterStore.reset

    def reset(
        self: CounterStore, client: str, windows: dict[str, int], reset_ns: int | None = None
    ) -> int:
        if reset_ns is None:
            return int(original(self, client, windows, reset_ns))
        kept = {}
        for series, window_ns in windows.items():
            counter = self._counters.get((series, client))
            if (
                counter is not None
                and not series.startswith("token_bucket")
                and counter.window * window_ns < reset_ns <= (counter.window + 1) * window_ns
            ):
                kept[series] = window_ns
        rest = {s: w for s, w in windows.items() if s not in kept}
        return int(original(self, client, rest, reset_ns))

    return [(CounterStore, "reset", reset)]


# --- forwarding and de-duplication -------------------------------------------------------


def _plant_dedup_evicts_newest(node: Node) -> None:
    """The owner's answer cache, once full, evicts the answer it just stored
    (``popitem()`` for ``popitem(last=False)``): past ``dedup_per_peer`` checks from a
    peer, every duplicate is decided again."""
    from collections import OrderedDict

    class NewestOut(OrderedDict[int, Any]):
        def popitem(self, last: bool = True) -> Any:
            return super().popitem(last=True)

    forwarding = node.forwarding

    def make(answers_of: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(sender: str, life: int) -> Any:
            seen = answers_of(sender, life)
            if not isinstance(seen, NewestOut):
                seen = forwarding._dedup[(sender, life)] = NewestOut(seen)
            return seen

        return wrapped

    _wrap(forwarding, "_answers_of", make)
    # Small enough that the shipped scenarios pass it, as a long-lived cluster would.
    from dataclasses import replace

    forwarding._config = replace(forwarding._config, dedup_per_peer=64)


# --- replication, hand-over, resync -------------------------------------------------------


def _patch_degraded_share_next_window() -> list[Patch]:
    """The degraded deal hashes the next window, not this one (``wall // W + 1``): the
    shares still sum to the units, but a node takes a spare unit in the wrong window."""
    from meshlimit.cluster.node import degraded
    from meshlimit.cluster.node.config import degraded_share as original

    def share(capacity: int, fraction: float, **kwargs: Any) -> int:
        return int(original(capacity, fraction, **{**kwargs, "window": kwargs["window"] + 1}))

    return [(degraded, "degraded_share", share)]


# --- codec and degraded reports -----------------------------------------------------------


def _patch_fit_items_drops_last() -> list[Patch]:
    """A list split over several messages loses its last one (the loop's final flush
    skipped when the list did not fit one message): large hand-overs, gossip rounds, rule
    transfers and join replies lose their tail."""
    from meshlimit.cluster.wire import codec

    original = codec.fit_items

    def fit_items(cls: Any, items: Any, budget: int, **kwargs: Any) -> list[Any]:
        out = list(original(cls, items, budget, **kwargs))
        return out[:-1] if len(out) > 1 else out

    return [(codec, "fit_items", fit_items)]


SECOND_ADVERSARY_MUTANTS: tuple[Mutant, ...] = (
    Mutant("fixed_window_strict_boundary", "window arithmetic",
           "the fixed window admits while cost < room: the last unit of a window is refused",
           ("rule_change_storm", "healthy", "operator_reset"),
           patches=_patch_fixed_window_strict_boundary),
    Mutant("sliding_floor_weight", "window arithmetic",
           "the previous window's weight is rounded down to whole units",
           ("healthy", "hot_client"), patches=_patch_sliding_floor_weight),
    Mutant("token_bucket_idle_credit", "burst carry",
           "an idle token bucket's arrival time is never moved up to now",
           ("token_bucket_idle_bursts", "token_bucket_hot"), patches=_patch_token_bucket_idle_credit),
    Mutant("merge_tat_overwrites", "replication",
           "a gossiped token-bucket arrival time replaces ours even when earlier",
           ("token_bucket_lossy", "token_bucket_hot"), patches=_patch_merge_tat_overwrites),
    Mutant("merge_ignores_previous", "replication",
           "a merged slot of the previous window is dropped",
           ("handover_sliding_hot", "owner_crash", "join_under_load"),
           patches=_patch_merge_ignores_previous),
    Mutant("refute_not_above_rumour", "membership: incarnations",
           "a refutation bumps our incarnation by one, not past the rumour's",
           ("lossy_then_clean", "restart_before_reap", "rolling_restart"),
           plant=_plant_refute_not_above_rumour),
    Mutant("next_stamp_same_ms", "rule ordering",
           "two writes of one node in one millisecond share a stamp",
           ("concurrent_rule_writes", "rule_races", "rule_change_storm"),
           patches=_patch_next_stamp_same_ms),
    Mutant("reset_keeps_its_window", "resets",
           "a late reset keeps the counter of the window the reset fell in",
           ("reset_during_partition", "operator_reset"), patches=_patch_reset_keeps_its_window),
    Mutant("dedup_evicts_newest", "de-duplication",
           "the owner's full answer cache evicts the answer it just stored",
           ("duplication_reordering", "loss_20pct", "hot_client"),
           plant=_plant_dedup_evicts_newest),
    Mutant("degraded_share_next_window", "degraded quota",
           "the degraded deal hashes the next window, not this one",
           ("minority_partition", "edge_small_limit_degraded", "owner_crash"),
           patches=_patch_degraded_share_next_window),
    Mutant("fit_items_drops_last", "codec",
           "a list split over several messages loses its last message",
           ("join_under_load", "rule_change_storm", "rolling_restart"),
           patches=_patch_fit_items_drops_last),
)  # fmt: skip
