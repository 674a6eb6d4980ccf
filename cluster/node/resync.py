"""Resync: a restarted node waits for its counts before it decides at full capacity.

Theory of operation. A node killed and started again at once (same node id) is back
before its peers suspect it: they never saw it dead, no ring changed, and nothing used to
bring the counts of the current windows back to it. Its new life started with an empty
table and, as the owner of its clients, admitted up to their whole capacity again (36
checks for a limit of 20 in a 3-node test).

Now the new life learns from its first join reply that the cluster knew an earlier life
of it (``Membership.earlier_life``: the seed names what it held of us before our Join),
announces itself above that life's incarnation straight to every live peer
(``Membership.announce``), and *resyncs*: until every peer it then held live has handed
back what it holds for it, it decides the checks of the clients it owns, its own and
those forwarded to it, from its degraded quota, as if their owner were unreachable. A
peer that sees a member alive at a higher incarnation (or a new member) hands over the
counters that member holds (``Replication.queue_handover``), paced as every hand-over,
and then says ``HandoverDone`` with the number of counter slots it sent that name some
other node's count (only a hand-over sends those: replication carries the sender's own
slot alone; ``replication.handed_over``); the new life counts those slots from each peer
and is done with it once its done came and that many arrived (a done that overtook its
last counters does not end the wait; one whose counters were lost times out).

The wait ends when every awaited peer is done, dead or gone from the view, or after
``resync_wait_ns`` (counted in ``resync_timeouts``): a peer whose done was lost must not
hold a node degraded for good. A peer only holds counts it merged before it learned of
the new life, so the owner's admissions lost in a crash are those of its last gossip
interval before it (``docs/design.md``, failure scenarios).

State: the awaited peers (at most the members), slot counts for them, one deadline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from meshlimit.cluster.membership.timing import NEVER
from meshlimit.cluster.wire.messages import HandoverDone


class Resync:
    """Whether this life still waits for its counts, and from whom."""

    def __init__(self, wait_ns: int, *, stats: Counter[str]) -> None:
        self._wait_ns = wait_ns
        self._stats = stats
        #: This life decides its own clients from the degraded quota (read on every check).
        self.active = False
        #: A resync was started in this life (once per life).
        self.begun = False
        self._awaited: set[str] = set()
        self._received: Counter[str] = Counter()  # slots from each awaited peer
        self._expected: dict[str, int] = {}  # slots each done said it sent
        self._incarnation = 0
        self._until = NEVER

    def begin(self, peers: Iterable[str], *, incarnation: int, now_ns: int) -> None:
        """Wait for ``peers`` to hand back what they hold for this life, which announced
        itself at ``incarnation``; at most ``resync_wait_ns`` from ``now_ns``."""
        self.begun = True
        self._awaited = set(peers)
        self._incarnation = incarnation
        self._until = now_ns + self._wait_ns
        self._stats["resyncs"] += 1
        self._settle()

    def next_deadline(self) -> int:
        """When the wait gives up."""
        return self._until if self.active else NEVER

    def tick(self, *, now_ns: int) -> None:
        """Give up waiting once ``resync_wait_ns`` passed."""
        if self.active and now_ns >= self._until:
            self._stats["resync_timeouts"] += 1
            self._awaited.clear()
            self._settle()

    def on_slots(self, sender: str, count: int) -> None:
        """``count`` counter slots came from ``sender``."""
        if sender in self._awaited:
            self._received[sender] += count
            self._done_with(sender)

    def on_done(self, sender: str, message: HandoverDone) -> None:
        """``sender`` sent everything it held for a life at ``message.incarnation`` (one
        for an earlier life of this node, or an earlier announcement, ends nothing)."""
        if sender in self._awaited and message.incarnation >= self._incarnation:
            self._expected[sender] = message.slots
            self._done_with(sender)

    def keep_only(self, live: Iterable[str]) -> None:
        """Stop waiting for peers no longer live (dead, left, forgotten)."""
        if self.active:
            self._awaited.intersection_update(live)
            self._settle()

    def _done_with(self, sender: str) -> None:
        expected = self._expected.get(sender)
        if expected is not None and self._received[sender] >= expected:
            self._awaited.discard(sender)
            self._settle()

    def _settle(self) -> None:
        self.active = bool(self._awaited)
        if not self.active:
            self._until = NEVER
            self._received.clear()
            self._expected.clear()
