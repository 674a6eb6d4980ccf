"""Lifeguard's local health awareness: a node that is itself slow waits longer.

A node that is overloaded, or whose network is, misses acks that its peers did send, and
would accuse healthy members. Lifeguard (memberlist's ``awareness.go``) keeps a score:
up by one each time this node had to refute a suspicion about itself (its peers found it
slow) or found itself stalled (a tick far behind its deadline: ``Membership`` then also
holds its probe inconclusive), down by one for each probe of ours answered in time, between 0 and
``awareness_max - 1``. The score widens what this node waits before it accuses: the time
its probe waits for a direct ack before asking others, and the starting timeout of the
suspicions it raises, each times ``score + 1``, the first kept within the probe interval
and the second within Lifeguard's longest suspicion (``suspicion_max_mult``), so the
detection bounds of ``docs/design.md`` hold at any score.
"""

from __future__ import annotations

from collections import Counter


class Awareness:
    """The local health score and the timeouts it widens."""

    def __init__(self, maximum: int, stats: Counter[str]) -> None:
        assert maximum >= 1, "awareness_max must be at least 1"
        self._max = maximum
        self._stats = stats
        self.score = 0
        """0 when healthy; ``maximum - 1`` at worst."""
        self._stalled_at = -1  # when a tick last found this node stalled
        self._excused = 0  # unanswered probes in a row excused by a stall

    def refuted(self) -> None:
        """Peers suspected this node: it may be the slow one."""
        self._apply(1)

    def note_tick(self, now_ns: int, due_ns: int, late_ns: int) -> None:
        """A tick at ``now_ns`` for work due at ``due_ns``: at least ``late_ns`` behind, this
        node did not run meanwhile (overloaded, or paused), so what it times out may have
        been answered: it is the slow one, and waits longer from now on."""
        if now_ns - due_ns >= late_ns:
            self._stalled_at = now_ns
            self._stats["stalls"] += 1
            self._apply(1)

    def excuses(self, sent_ns: int) -> bool:
        """Whether a probe sent at ``sent_ns`` and left unanswered is inconclusive: this
        node stalled since (``probes_inconclusive``). At most ``maximum`` in a row, so a
        node that is always stalled still accuses in the end."""
        if self._stalled_at >= sent_ns and self._excused < self._max:
            self._excused += 1
            self._stats["probes_inconclusive"] += 1
            return True
        self._excused = 0
        return False

    def probe_answered(self) -> None:
        """A probe of ours was answered in time: this node hears its peers."""
        self._excused = 0
        self._apply(-1)

    def probe_timeout_ns(self, timeout_ns: int, interval_ns: int) -> int:
        """How long a probe waits for a direct ack: widened, but within the interval."""
        return min(timeout_ns * (self.score + 1), interval_ns * 9 // 10)

    def suspicion_min_ns(self, base_ns: int, max_ns: int) -> int:
        """The shortest timeout of a suspicion this node raises: widened, up to ``max_ns``."""
        return min(base_ns * (self.score + 1), max_ns)

    def _apply(self, delta: int) -> None:
        score = min(max(self.score + delta, 0), self._max - 1)
        if score != self.score:
            self.score = score
            self._stats["awareness_changes"] += 1
