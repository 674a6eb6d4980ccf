"""What one life must have heard of another's admissions: the proof behind a tight bound.

Two deciders at full capacity in one client window (an owner and the owner after it, or
two local-mode nodes) may together admit more than the capacity only by what one did not
know of the other. :class:`Knowledge` answers, for lives ``a`` and ``b`` and an instant
``until``: before which instant were all of ``a``'s admissions in ``b``'s counts by
``until``? Nothing is assumed: each answer needs the design's mechanism and a run in which
it could not fail.

- **Gossip** (local mode): a node sends its changed slots to every live peer each gossip
  interval ``G``. So ``a``'s admissions before ``until - (G + delay)`` are known to ``b``,
  if ``b`` was up before the window's first admission, ``a`` kept running to send them,
  ``a``'s view held ``b`` live meanwhile, and the link ``a -> b`` was clean.
- **Hand-over** (strict mode): when ``a``'s ring changes so that ``b`` owns the client,
  ``a`` queues the counters whose holders changed and sends them paced, a batch a gossip
  round (:func:`~meshlimit.cluster.node.replication.handover_budget` counters and
  ``handover_bytes_per_round`` bytes at most); when ``a`` leaves gracefully it sends
  everything at once. So ``a``'s admissions before that instant are known to ``b`` once
  the last batch can have arrived -- ``rounds x G`` plus a delay later, ``rounds`` the
  counters ``a`` may hold (no more than the distinct client series decided anywhere so
  far) over what a round sends -- if ``a`` kept running, no further ring change restarted
  the hand-over, ``b`` was up and the link clean.

- **Resync** (strict mode, two lives of one node): a life ``b`` that followed ``a`` on the
  same node (killed and restarted, perhaps before anyone noticed) decides its clients
  from the degraded quota until every peer it holds live has handed its counts back
  (``cluster/node/resync.py``). ``a``'s admissions left for the client's replica ``r``
  with their answers, so those before ``min(a's end, b's start) - delay`` were at ``r``
  before ``b`` began (degraded ones go with the next gossip round: the judge adds those of
  the ``G`` before that instant, ``windows.judge``), and ``r``
  hands them to ``b`` before ``b`` decides at full capacity -- if ``r`` (a successor of
  the owner in a ring that did not change) ran throughout, ``b``'s view held it live, the
  links ``a -> r`` and ``r -> b`` were clean, and ``r``'s hand-over (``rounds x G`` plus
  the join, the announcement and the done, four delays) ends within ``resync_wait``.

Each needs the wall clocks untouched (counts merge by window index, so a skewed
receiver drops a window it has not reached) and every delay bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.node import replication
from meshlimit.cluster.node.replication import handover_budget, handover_scan_budget

from .bounds import TICK_SLACK_NS, UNBOUNDED
from .history import History, Life
from .views import Rings, View
from .windows import NOTHING_KNOWN, LifeKey

#: Encoded bytes of a counter slot beyond its strings, and of a (node, count) item beyond
#: the node id: the node's own pacing figures (``cluster/node/replication.py``) if any.
_SLOT_BYTES: int = getattr(replication, "SLOT_OVERHEAD_BYTES", 16)
_ITEM_BYTES: int = getattr(replication, "ITEM_OVERHEAD_BYTES", 16)


def counter_bytes(keys: Collection[tuple[str, str]], nodes: Collection[str]) -> int:
    """The most one counter of a run can take in a hand-over: two windows' slots, each the
    client id, the series, framing, and an item per node (ids, counts); ``keys``: the
    ``(client, series)`` counted in the run, ``nodes``: every node's name."""
    client = max((len(key[0]) for key in keys), default=0)
    series = max((len(key[1]) for key in keys), default=0)
    node = max(len(name) for name in nodes)
    return 2 * (client + series + _SLOT_BYTES + len(nodes) * (node + _ITEM_BYTES))


class Knowledge:
    """See the module docstring; ``counters(at)`` bounds the counters one node holds at
    ``at`` (every counter comes from a decision somewhere: the distinct ones made so far)."""

    def __init__(
        self,
        history: History,
        views: dict[LifeKey, View],
        rings: Rings,
        *,
        local: bool,
        gossip_interval_ns: int,
        membership: MembershipConfig,
        counters: Callable[[int], int],
        round_bytes: int,
        counter_bytes: int,
        replicas: int = 0,
        resync_wait_ns: int = 0,
    ) -> None:
        self._history = history
        self._views = views
        self._rings = rings
        self._local = local
        self._gossip_ns = gossip_interval_ns
        self._membership = membership
        self._counters = counters
        self._round_bytes = round_bytes
        self._counter_bytes = max(1, counter_bytes)
        self._replicas = replicas
        self._resync_wait_ns = resync_wait_ns

    def known_before(self, a: LifeKey, b: LifeKey, client: str, until: int, first: int) -> int:
        """The instant before which every admission of ``a`` was in ``b``'s counts by
        ``until`` (``first``: the window's first admission), or ``NOTHING_KNOWN``."""
        history = self._history
        life_a, life_b = self._life(a), self._life(b)
        if life_a is None or life_b is None:
            return NOTHING_KNOWN
        if history.clock_touched(a[0], until) or history.clock_touched(b[0], until):
            return NOTHING_KNOWN
        if a[0] == b[0]:
            if self._local or b[1] <= a[1]:
                return NOTHING_KNOWN
            return self._by_resync(life_a, life_b, client, until, first)
        if self._local:
            return self._by_gossip(life_a, life_b, until, first)
        return self._by_handover(life_a, life_b, client, until)

    def _by_gossip(self, a: Life, b: Life, until: int, first: int) -> int:
        history = self._history
        delay = history.delay_bound(first, until)
        if delay >= UNBOUNDED:
            return NOTHING_KNOWN
        # Admissions before ``instant`` left ``a`` by ``sent_by`` (its next gossip round,
        # while it still ran) and reached ``b`` a delay later.
        instant = min(until - delay - TICK_SLACK_NS, a.stopped_at) - self._gossip_ns
        sent_by = instant + self._gossip_ns
        view_a = self._views.get(a.key)
        if (
            b.started_at > first
            or not a.running_through(max(first, a.started_at), sent_by - 1)
            or not b.running_through(first, until)
            or view_a is None
            or not view_a.live_throughout(b.node, first, sent_by)
            or not history.link_clean(a.node, b.node, first, until)
        ):
            return NOTHING_KNOWN
        return instant

    def _by_handover(self, a: Life, b: Life, client: str, until: int) -> int:
        best = NOTHING_KNOWN
        view_a = self._views.get(a.key)
        if view_a is None:
            return best
        history = view_a.ring_history
        for index in range(1, len(history)):
            before, (at, after) = history[index - 1][1], history[index]
            if at > until:
                break
            owner_before = self._rings.owner(before | {a.node}, client)
            owner_after = self._rings.owner(after | {a.node}, client)
            if owner_before != a.node or owner_after != b.node:
                continue
            # The counters whose holders changed go out paced, a batch a gossip round from
            # now; a further change before they are all out starts the scan over.
            arrived = at + self._pace(at) + self._history.delay_bound(at, until) + TICK_SLACK_NS
            later = history[index + 1][0] if index + 1 < len(history) else UNBOUNDED
            if later > arrived and self._sent(a, b, at, arrived, until):
                best = at
        if a.left:
            at = a.stopped_at  # everything goes at once, to the ring without it
            ring = next((m for t, m in reversed(history) if t <= at), frozenset())
            successors = ring - {a.node}
            moved = successors and self._rings.owner(successors, client) == b.node
            arrived = at + self._history.delay_bound(at, until) + TICK_SLACK_NS
            if moved and self._sent(a, b, at, arrived, until):
                best = max(best, at)
        return best

    def _by_resync(self, a: Life, b: Life, client: str, until: int, first: int) -> int:
        history = self._history
        delay = history.delay_bound(first, until)
        view_a, view_b = self._views.get(a.key), self._views.get(b.key)
        if delay >= UNBOUNDED or view_a is None or view_b is None or self._replicas <= 0:
            return NOTHING_KNOWN
        start = min(a.stopped_at, b.started_at)
        instant = start - delay - TICK_SLACK_NS
        if self._pace(b.started_at) + 4 * delay + TICK_SLACK_NS > self._resync_wait_ns:
            return NOTHING_KNOWN  # the new life may stop waiting before it has them
        # ``a``'s last ring: what it admitted before it went to the replicas of that ring by
        # hand-over (once ``settled``), what it admitted after with each answer.
        changed, ring = next((t, m) for t, m in reversed(view_a.ring_history) if t <= start)
        settled = changed + self._pace(changed) + delay + TICK_SLACK_NS
        prefs = self._rings.preference(ring | {a.node}, client, 1 + self._replicas)
        if settled > instant or not prefs or prefs[0] != a.node:
            return NOTHING_KNOWN
        # ``b`` waits for the peers its view held live when it joined (its first events).
        joined = view_b.log[0][0] if view_b.log else None
        for r in prefs[1:]:
            lo = min(first, a.started_at)
            life_r = next(
                (x for x in history.lives.get(r, []) if x.running_through(lo, until)), None
            )
            view_r = None if life_r is None else self._views.get(life_r.key)
            if (
                life_r is not None
                and view_r is not None
                and not history.clock_touched(r, until)
                and _ring_at(view_r, settled) == ring
                and _ring_still(view_r, settled, until)
                and joined is not None
                and view_b.live_throughout(r, joined, until)
                and history.link_clean(a.node, r, min(first, changed), start)
                and history.link_clean(r, b.node, b.started_at, until)
            ):
                return instant
        return NOTHING_KNOWN

    def pace(self, at: int) -> int:
        """How long a hand-over that starts at ``at`` may take (see ``_pace``)."""
        return self._pace(at)

    def _pace(self, at: int) -> int:
        """How long a hand-over that starts at ``at`` may take to send its last counter:
        ``rounds x G``, ``rounds`` = the node's counters over what one round sends (at most
        ``handover_budget`` counters, ``handover_scan_budget`` examined, and
        ``handover_bytes_per_round`` bytes of counters this run's largest)."""
        by_bytes = max(1, self._round_bytes // self._counter_bytes)
        scanned = handover_scan_budget(self._gossip_ns)
        per_round = min(handover_budget(self._gossip_ns), scanned, by_bytes)
        rounds = 1 + -(-self._counters(at) // per_round)
        return rounds * self._gossip_ns

    def _sent(self, a: Life, b: Life, at: int, arrived: int, until: int) -> bool:
        """Whether a hand-over ``a`` started at ``at`` surely reached ``b`` by ``arrived``
        (no later than ``until``): ``b`` up and the link clean all along, and ``a`` still
        running to send it (a graceful leave sends everything at once, then stops)."""
        history = self._history
        if arrived > until or history.delay_bound(at, until) >= UNBOUNDED or b.started_at > at:
            return False
        if not (a.left and at == a.stopped_at) and not a.running_through(at, arrived):
            return False
        return b.running_through(at, arrived) and history.link_clean(a.node, b.node, at, arrived)

    def _life(self, key: LifeKey) -> Life | None:
        lives = self._history.lives.get(key[0], [])
        return lives[key[1] - 1] if 0 < key[1] <= len(lives) else None


def _ring_still(view: View, start: int, end: int) -> bool:
    """Whether ``view``'s ring did not change over ``(start, end]``."""
    return not any(start < at <= end for at, _ in view.ring_history)


def _ring_at(view: View, at: int) -> frozenset[str]:
    """The members of ``view``'s ring at ``at``."""
    return next((m for t, m in reversed(view.ring_history) if t <= at), frozenset())
