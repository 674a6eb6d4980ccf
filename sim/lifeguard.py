"""Lifeguard, judged: deaths against the suspicion timer's formula, health that comes back,
and member records that never go back, reaping or not.

Theory of operation. :mod:`~meshlimit.sim.suspicions` holds every death to the shortest
any suspicion may run; this module holds a death that a node's own timer declared to the
timeout *its* suspicion had (``cluster/membership/suspicion.py``, ``awareness.py``,
``docs/design.md``). The world hands each membership event with the node's membership,
read only (its local health score, its member records), and whether a datagram or a timer
caused it; :mod:`~meshlimit.sim.news` hands the membership news of every datagram judged.

**Lifeguard's timeout** (``dead_too_soon``). A suspicion that ``O`` starts of ``S`` with
``n`` live members (self and ``S`` included) runs
``max - (max - min) x log(c + 1) / log(K + 1)`` (``min`` once ``c >= K``), where
``base = suspicion_mult x max(1, log10 n) x probe_interval``, ``max = suspicion_max_mult x
base``, ``min = min(base x (h + 1), max)`` for ``O``'s health score ``h`` when it began,
``K = min(suspicion_confirmations, n - 3)`` and ``c`` the distinct accusers after the first.
A DEAD that ``O``'s timer declared (not a datagram's news) ends a suspicion that ran at
least that long, judged with what bounds the timeout from below: the fewest live members
``O``'s table can have held (its view's, less ``S`` if ``S`` came back from the dead); the
score after the input that began it, less one per rumour of ``O`` itself the input carried
(each refutation raises it by one; a timer input raises it before it accuses), 0 if that
datagram was not judged; and, for ``c``, every member that relayed news of ``S``'s
suspicion to ``O`` since, plus ``O`` itself (its own failed probe confirms), less one for
the first accuser -- one more if the datagram that began it was not judged. A clock that
drifts by ``p`` ppm shortens it by that much; a sealed cluster's news is not read, so every
accuser is taken as confirmed.

**Health comes back** (``health_not_recovered``). The score falls by one for each probe of
``O``'s answered in time and rises only when ``O`` refutes news of itself or stalls. After a
quiet span -- no fault, pause or start, every member of the cluster running and held alive
by every view, no membership event anywhere (a refutation is one at every peer), no loss,
and round trips within half a probe interval -- of ``(awareness_max + 1)`` probe intervals (a
probe in flight, then one answered per interval down from the highest score), every running
node's score is 0 at the end.

**Health rises on a refutation** (``health_not_raised``). A node told by gossip that it is
suspect, dead or gone refutes, and each refutation raises its score by one (to at most
``awareness_max - 1``); nothing in the same datagram lowers it. So right after a judged
datagram carrying such a rumour, the score of a node that has not left is at least 1.

**No record goes back** (``stale_member_state``). At each event, ``O``'s record of the
member it is about (incarnation, state) is at least the last one it held: a higher
incarnation wins, then the more severe state. This holds across reaping, since the roster
keeps a reaped member's record (``cluster/membership/roster.py``) for ``forget_after_ns``:
a dead member comes back only at a higher incarnation, never on a stale alive rumour.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.wire.messages import JoinReply, MemberState, MemberUpdate

from .bounds import with_timer_slack
from .events import NS_PER_S
from .history import History, Life
from .verdicts import Violation
from .views import View
from .windows import LifeKey

if TYPE_CHECKING:  # pragma: no cover
    from meshlimit.cluster.membership import Membership

#: Findings kept.
MAX_FINDINGS = 20
_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


# --- the design's formulas, restated (a bug planted in the node's copy is judged) -------


def base_timeout_ns(config: MembershipConfig, n: int) -> int:
    """``suspicion_mult x max(1, log10 n) x probe_interval``."""
    return int(config.suspicion_mult * max(1.0, math.log10(max(1, n))) * config.probe_interval_ns)


def confirmations_expected(config: MembershipConfig, n: int) -> int:
    """Lifeguard's ``K = min(suspicion_confirmations, n - 3)``, at least 0."""
    return max(0, min(config.suspicion_confirmations, n - 3))


def suspicion_runs_ns(config: MembershipConfig, n: int, health: int, confirmed: int) -> int:
    """How long a suspicion begun with ``n`` live members at health score ``health`` runs
    after ``confirmed`` confirmations (see the module docstring)."""
    base = base_timeout_ns(config, n)
    longest = config.suspicion_max_mult * base
    shortest = min(base * (health + 1), longest)
    k = confirmations_expected(config, n)
    if k < 1 or confirmed >= k:
        return shortest
    frac = math.log(confirmed + 1) / math.log(k + 1)
    return max(shortest, int(longest - frac * (longest - shortest)))


class _Begun:
    """What bounds one running suspicion's timeout from below."""

    __slots__ = ("at", "health", "known", "members")

    def __init__(self, at: int, members: int, health: int, known: bool) -> None:
        self.at, self.members, self.health, self.known = at, members, health, known


class Lifeguard:
    """The verdicts (see the module docstring)."""

    def __init__(self, history: History, config: MembershipConfig, *, sealed: bool) -> None:
        self._history = history
        self._config = config
        self._sealed = sealed
        self.findings: list[Violation] = []
        #: (life, subject) -> members that relayed news of its suspicion to the life.
        self._accusers: dict[tuple[LifeKey, str], set[str]] = {}
        #: life -> (instant, rumours of itself) of the last datagram judged at it.
        self._datagram: dict[LifeKey, tuple[int, int]] = {}
        self._begun: dict[tuple[LifeKey, str], _Begun] = {}
        #: (life, member) -> the last (incarnation, state) the life held of the member.
        self._records: dict[tuple[LifeKey, str], tuple[int, int]] = {}
        self.health_after: int | None = None
        """The health score of the node that took the datagram judged next, after it."""

    # --- observations -------------------------------------------------------------------

    def on_news(self, life: Life, sender: str, messages: tuple[object, ...], now: int) -> None:
        """A datagram from ``sender`` judged at ``life``, with the messages it carried (the
        node's health score after it in :attr:`health_after`)."""
        own = rumours = 0
        for message in messages:
            if isinstance(message, MemberUpdate):
                updates: tuple[MemberUpdate, ...] = (message,)
                rumours += message.node == life.node and message.state != MemberState.ALIVE
            elif isinstance(message, JoinReply):
                updates = message.members
            else:
                continue
            for update in updates:
                if update.node == life.node:
                    own += 1
                elif update.state == MemberState.SUSPECT:
                    self._accusers.setdefault((life.key, update.node), set()).add(sender)
        self._datagram[life.key] = (now, own)
        health = self.health_after
        if rumours and health == 0 and self._config.awareness_max > 1:
            self._not_raised(life, sender, now)

    def _not_raised(self, life: Life, sender: str, now: int) -> None:
        """``life`` was told it is suspect, dead or gone and still scores 0 (unless it left)."""
        if life.left or len(self.findings) >= MAX_FINDINGS:
            return
        self.findings.append(Violation(
            "health_not_raised",
            f"{life.node} (life {life.number}) took a rumour of its own suspicion, death or"
            f" departure from {sender} at {now / NS_PER_S:.6f} s and its local health score"
            f" is still 0 (each refutation raises it by one)", nodes=(life.node,),
        ))  # fmt: skip

    def on_event(
        self,
        life: Life,
        view: View,
        subject: str,
        new_state: int,
        now: int,
        membership: Membership,
        *,
        by_datagram: bool,
    ) -> None:
        """``life`` reports ``subject`` now ``new_state`` (``view``: its view before);
        ``membership``: its membership after the input that caused it."""
        key = (life.key, subject)
        self._no_regression(life, subject, membership, now)
        was = view.states.get(subject)
        if new_state == MemberState.SUSPECT and was != MemberState.SUSPECT:
            self._begin(life, view, subject, was, now, membership, by_datagram)
            return
        begun = self._begun.pop(key, None)
        accusers = self._accusers.pop(key, set())
        if new_state == MemberState.DEAD and not by_datagram and begun is not None:
            self._judge_death(life, subject, begun, accusers, now)

    def _begin(
        self,
        life: Life,
        view: View,
        subject: str,
        was: int | None,
        now: int,
        membership: Membership,
        by_datagram: bool,
    ) -> None:
        others = sum(
            1 for m, st in view.states.items() if st in _LIVE and m not in (life.node, subject)
        )
        counted = was is None or was in _LIVE  # the table counts it when it starts the timer
        health = membership.local_health
        known = True
        if by_datagram:
            seen = self._datagram.get(life.key)
            if seen is not None and seen[0] == now and not self._sealed:
                health = max(0, health - seen[1])
            else:
                health, known = 0, False
        self._begun[(life.key, subject)] = _Begun(now, others + 1 + counted, health, known)

    def _judge_death(
        self, life: Life, subject: str, begun: _Begun, accusers: set[str], now: int
    ) -> None:
        """``life``'s own timer declared ``subject`` dead at ``now``."""
        drift_ppm = self._history.max_drift_ppm.get(life.node, 0.0)
        if drift_ppm >= 1_000_000 or len(self.findings) >= MAX_FINDINGS:
            return
        k = confirmations_expected(self._config, begun.members)
        confirmed = len(accusers | {life.node}) - 1 + (not begun.known)
        if self._sealed:  # its news unread: every accuser may have confirmed
            confirmed = k
        runs = suspicion_runs_ns(self._config, begun.members, begun.health, confirmed)
        shortest = runs - int(runs * drift_ppm / 1_000_000)
        if now - begun.at >= shortest:
            return
        self.findings.append(Violation(
            "dead_too_soon",
            f"{life.node} (life {life.number}) declared {subject} dead at {now / NS_PER_S:.6f} s"
            f" by its own timer, {(now - begun.at) / NS_PER_S:.3f} s into a suspicion that"
            f" runs {shortest / NS_PER_S:.3f} s (Lifeguard: {begun.members} live members,"
            f" health {begun.health}, {confirmed} of {k} confirmations at most)",
            nodes=(life.node, subject),
        ))  # fmt: skip

    def _no_regression(self, life: Life, subject: str, membership: Membership, now: int) -> None:
        record = next(
            ((m.incarnation, m.state) for m in membership.members() if m.node == subject), None
        )
        if record is None:
            return
        key = (life.key, subject)
        was = self._records.get(key)
        self._records[key] = record if was is None else max(was, record)
        if was is None or record >= was or len(self.findings) >= MAX_FINDINGS:
            return
        self.findings.append(Violation(
            "stale_member_state",
            f"{life.node} (life {life.number}) went back at {now / NS_PER_S:.6f} s from"
            f" {MemberState.NAMES.get(was[1], '?')} at incarnation {was[0]} to"
            f" {MemberState.NAMES.get(record[1], '?')} at incarnation {record[0]} for"
            f" {subject} (a dead member comes back only at a higher incarnation)",
            nodes=(life.node, subject),
        ))  # fmt: skip

    # --- at the end ---------------------------------------------------------------------

    def judge_health(
        self,
        nodes: dict[str, tuple[Any, int]],
        views: dict[LifeKey, View],
        quiet_since: int,
        end: int,
    ) -> None:
        """Every running node's score is 0 at ``end`` after a quiet span since
        ``quiet_since`` of at least :meth:`recovery_ns` (see the module docstring)."""
        history, config = self._history, self._config
        if end - quiet_since < self.recovery_ns() or history.scenario.network.loss > 0:
            return
        running = set(history.running_nodes())
        if running != history.members or len(running) < 2:
            return
        if 2 * history.delay_bound(quiet_since, end) >= config.probe_interval_ns // 2:
            return
        if not all(
            history.link_clean(a, b, quiet_since, end) for a in running for b in running if a != b
        ):
            return
        lives = [history.life(name) for name in sorted(running)]
        for life in lives:  # a view holding a member down could still tell it so
            view = views.get(life.key) if life is not None else None
            if view is None or {m for m, st in view.states.items() if st != MemberState.ALIVE}:
                return
            if set(view.states) != running:
                return
        for life in lives:
            if life is None or life.reachable_at > quiet_since:
                continue
            if life.paused_during(quiet_since, end):
                continue
            name = life.node
            node = nodes.get(name)
            health = node[0].membership.local_health if node is not None else 0
            if health and len(self.findings) < MAX_FINDINGS:
                self.findings.append(Violation(
                    "health_not_recovered",
                    f"{name} (life {life.number}) still had local health score {health} at"
                    f" {end / NS_PER_S:.3f} s, after {(end - quiet_since) / NS_PER_S:.1f} s"
                    f" with no fault and no membership change (it falls by one per answered"
                    f" probe: 0 within {self.recovery_ns() / NS_PER_S:.1f} s)",
                    nodes=(name,),
                ))  # fmt: skip

    def recovery_ns(self) -> int:
        """The quiet span after which every score is 0: ``awareness_max + 1`` probe
        intervals, with the timers' slack."""
        config = self._config
        return with_timer_slack((config.awareness_max + 1) * config.probe_interval_ns)
