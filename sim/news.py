"""Membership news, judged per datagram: the newer news wins, and a member refutes its death.

Theory of operation. SWIM's table merges news by one rule (``cluster/membership/members.py``,
``docs/design.md``): of two records of a member, the one at the higher incarnation wins, and
at equal incarnation the more severe state (ALIVE < SUSPECT < DEAD < LEFT); and a member told
that it is suspected or dead at an incarnation no lower than its own refutes at a higher one.
So right after a node takes in a datagram, its record of every member the datagram carried
news of (piggybacked updates, a join reply's members) is at least as new as that news, and
its own incarnation is above any suspicion or death of itself it was told of and at least
any life of itself it was told of. A node that kept an older record (``stale_member_state``)
ignored a refutation, a restart's new life or a death -- so a live member stays down, or a
dead one up, for as long as nothing else repairs it.

The world hands :meth:`News.on_datagram` the datagram a node just took and the node's
member list after it (``Node.members()``, what ``meshlimit ctl members`` prints), only while
some node holds some member down (``wanted``: the views say so), since only then can an
ignored refutation matter; decoding costs. Members missing from the table after the
datagram (reaped into the roster, or never added) are not judged, nor is anything in a
cluster whose datagrams are sealed (a replay window may drop a duplicate before its news is
read).
"""

from __future__ import annotations

from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.messages import JoinReply, MemberState, MemberUpdate

from .events import NS_PER_S
from .verdicts import Violation

_STATES = {name: state for state, name in MemberState.NAMES.items()}
#: Findings kept.
MAX_FINDINGS = 20


class News:
    """The verdict (see the module docstring)."""

    def __init__(self, *, sealed: bool) -> None:
        self._sealed = sealed
        self.wanted = False
        """Whether some running node holds some member down (set by the checkers)."""
        self.datagrams = 0
        """Datagrams judged."""
        self.findings: list[Violation] = []

    def on_datagram(
        self,
        node: str,
        payload: bytes,
        members: list[tuple[str, object, str, int]],
        now: int,
    ) -> None:
        """``node`` took ``payload``; ``members`` is its member list right after."""
        if self._sealed or len(self.findings) >= MAX_FINDINGS:
            return
        try:
            envelope = codec.decode(payload)
        except codec.DecodeError:
            return
        updates: list[MemberUpdate] = []
        for message in envelope.messages:
            if isinstance(message, MemberUpdate):
                updates.append(message)
            elif isinstance(message, JoinReply):
                updates.extend(message.members)
        if not updates:
            return
        self.datagrams += 1
        held = {name: (inc, _STATES.get(state, -1)) for name, _, state, inc in members}
        me = held.get(node)
        if me is None:
            return
        for update in updates:
            news = (update.incarnation, update.state)
            if update.node == node:
                if me[1] == MemberState.LEFT:
                    continue
                need = update.incarnation + (update.state != MemberState.ALIVE)
                if me[0] < need:
                    self._find(node, envelope.sender, update, f"its own incarnation {me[0]}", now)
                continue
            record = held.get(update.node)
            if record is not None and record < news:
                name = MemberState.NAMES.get(record[1], "?")
                self._find(node, envelope.sender, update, f"{name} at incarnation {record[0]}", now)

    def _find(self, node: str, sender: str, update: MemberUpdate, kept: str, now: int) -> None:
        if len(self.findings) >= MAX_FINDINGS:
            return
        news = f"{MemberState.NAMES.get(update.state, '?')} at incarnation {update.incarnation}"
        self.findings.append(Violation(
            "stale_member_state",
            f"{node} took news from {sender} at {now / NS_PER_S:.6f} s that {update.node} is"
            f" {news}, and kept {kept}", nodes=(node, update.node),
        ))  # fmt: skip
