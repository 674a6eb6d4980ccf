"""Who may decide at full capacity, and how much a degraded decider may spend.

A decision on the merged counts (path ``owner``, ``forwarded`` or ``local``) is a claim:
"I am in a majority, and (strict mode) I own this client". :class:`Deciders` checks the
claim against the decider's own view (:mod:`~meshlimit.sim.views`) and against what truly
happened (:mod:`~meshlimit.sim.history`):

- a node whose own view holds a minority, or that has been cut off from a majority of the
  cluster for longer than the detection bound, must decide in degraded mode
  (``minority_decided_at_full``);
- a node decides its own checks at full capacity only for clients it owns in its view,
  and answers a forwarded one only if some other live node's ring gave it the client when
  the check could have been sent (``not_owner``: the views of sender and receiver may
  differ for a gossip round or two, but never with no view behind them).

A degraded decision needs a cause: in a run without faults (a graceful leave or join is
none: a member that left is out of the quorum, so the rest are a majority of it), a node
whose view has held every member alive for longer than a forward takes to time out has
none (``degraded_without_cause``). It spends a share: :meth:`Deciders.share` is the exact deal of
``docs/design.md`` once the decider's view holds exactly the cluster, else the largest
share a node knowing that many members could take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.forwarding import MAX_TIMEOUT_MULT
from meshlimit.core.rules import Rule

from .bounds import TICK_SLACK_NS, UNBOUNDED, degraded_share, max_share, with_timer_slack
from .events import NS_PER_S
from .history import History, Life
from .views import Rings, View
from .windows import LifeKey

#: ``finding(kind, life, client, now, detail)``: a per-decision verdict.
Finding = Callable[[str, Life, str, int, str], None]
#: Forwarded checks decided by a node not owning them, kept to judge at the end.
MAX_DEFERRED = 10_000


class Deciders:
    """See the module docstring; ``views`` is the checkers' map of lives to views."""

    def __init__(
        self,
        history: History,
        views: dict[LifeKey, View],
        rings: Rings,
        config: NodeConfig,
        *,
        local: bool,
        detect_ns: int,
        finding: Finding,
    ) -> None:
        self._history = history
        self._views = views
        self._rings = rings
        self._config = config
        self._local = local
        self._detect_ns = detect_ns
        self._finding = finding
        self._positions: dict[frozenset[str], dict[str, int]] = {}
        self._forwarded_elsewhere: list[tuple[Life, str, int]] = []

    def judge_full(self, life: Life, view: View, client: str, path: str, now: int) -> None:
        """A decision on the merged counts: only an owner (strict) in a majority makes one."""
        if not view.may_have_majority(now):
            self._finding(
                "minority_decided_at_full", life, client, now, "its own view held a minority"
            )
        since = self._history.minority_since(life.node)
        if since is not None and now - since > self._detect_ns:
            self._finding(
                "minority_decided_at_full", life, client, now,
                f"cut off in a minority since {since / NS_PER_S:.3f} s, beyond the detection"
                f" bound {self._detect_ns / NS_PER_S:.1f} s",
            )  # fmt: skip
        if self._local or view.may_own(client, now, self._config.membership, self._rings):
            return
        if path == "owner":
            self._finding("not_owner", life, client, now, "decided its own check without owning")
        elif (
            not view.may_own_once_reaped(client, self._rings)
            and len(self._forwarded_elsewhere) < MAX_DEFERRED
        ):
            # The sender's view may be ahead of or behind ours: judged at the end.
            self._forwarded_elsewhere.append((life, client, now))

    def judge_degraded(
        self, life: Life, view: View, client: str, now: int, path: str = "degraded"
    ) -> None:
        """A degraded decision in a run without faults (no fault verb but graceful leaves
        and joins, which leave the true quorum a majority; no loss so far): once every
        running node has held every member of the cluster alive for longer than a
        forward takes to time out, no node has a cause to decide without the owner (nor to
        be asked for a client it does not own). Nor to answer ``overloaded`` (``path``):
        the simulator runs no node short of CPU, so an owner that every view holds alive
        answers within a forward timeout (a forwarder that dropped every reply was
        answering nothing but ``overloaded``, unjudged)."""
        history = self._history
        members = history.members
        timeout = MAX_TIMEOUT_MULT * self._config.forward_timeout_ns  # the adaptive one's most
        delay = history.delay_bound(0, now)
        if path == "overloaded" and 4 * delay >= self._config.forward_timeout_ns:
            return  # a round trip of half the timeout marks an owner slow: by design
        wait = timeout + delay + TICK_SLACK_NS
        for name in history.running_nodes():
            other = history.life(name)
            seen = self._views.get(other.key) if other is not None else None
            if (
                seen is None
                or not seen.knows_ring
                or now <= seen.last_event_at + wait
                or seen.quorum != members
                or not all(seen.live(member) for member in members)
            ):
                return
        if view.knows_ring:
            self._finding(
                f"{path}_without_cause", life, client, now,
                f"answered {path} in a run without faults, every member alive in its view",
            )  # fmt: skip

    def share(self, view: View, client: str, rule: Rule, index: int, now: int) -> int:
        """The most one degraded decision of this life could let it admit in window
        ``index``: its exact deal once its view of the cluster is the cluster, else the
        largest share of a cluster the size of the fewest members its quorum may hold
        (``bounds.max_share``: a member it reaped may have left, unseen); one
        that does not know the ring yet deals over at least two (itself and a seed)."""
        members = self._history.members
        fraction = self._config.degraded_fraction
        if view.knows_ring and view.quorum == members:
            key = frozenset(members)
            positions = self._positions.get(key)
            if positions is None:
                positions = self._positions[key] = {n: i for i, n in enumerate(sorted(key))}
            return degraded_share(
                rule.capacity, fraction, members=len(key), position=positions[view.node],
                client=client, window=index,
            )  # fmt: skip
        if view.knows_ring:
            return max_share(
                rule.capacity, fraction, view.quorum_floor(now, self._history.left_by(now))
            )
        # Not joined (or gone): the node deals the units over its seeds and itself, at least
        # two and at least ``expected_members`` (``DegradedMode._unknown_place``).
        return max_share(rule.capacity, fraction, max(2, self._config.expected_members))

    def check_forwarded(self) -> None:
        """Forwarded checks answered at full capacity by a node not owning the client: a
        transition if some other live node's ring gave the client to it when the check
        could have been sent (a delay before, or before the receiver's pause while the
        check sat in its socket buffer), else a routing error."""
        history = self._history
        reap_ns = self._config.membership.dead_reap_ns
        reap_slack = 2 * (with_timer_slack(reap_ns) - reap_ns)
        for life, client, at in self._forwarded_elsewhere:
            delay = history.delay_bound(0, at)
            earliest = at - delay - reap_slack - TICK_SLACK_NS
            for paused, resumed in life.pauses:
                if earliest <= resumed <= at:
                    earliest = min(earliest, paused - delay)
            if not any(
                self._rings.owner(members | {view.node}, client) == life.node
                for key, view in self._views.items()
                if key != life.key
                for members in self._rings_held(key, view, earliest, at)
            ):
                self._finding(
                    "not_owner", life, client, at,
                    "answered a forwarded check at full capacity for a client no other"
                    " node's ring gave it when the check was sent",
                )  # fmt: skip

    def _rings_held(
        self, key: LifeKey, view: View, start: int, end: int
    ) -> Iterator[frozenset[str]]:
        """The member sets of ``view``'s ring at some instant of ``[start, end]`` while its
        life was up."""
        life = self._history.lives[key[0]][key[1] - 1]
        up_from, up_to = max(start, life.started_at), min(end, life.stopped_at)
        ring_history = view.ring_history
        for index, (since, members) in enumerate(ring_history):
            until = ring_history[index + 1][0] if index + 1 < len(ring_history) else UNBOUNDED
            if since <= up_to and until >= up_from:
                yield members
