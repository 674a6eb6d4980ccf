"""Membership news, judged per datagram: the newer news wins, and a member refutes its death.

Theory of operation. SWIM's table merges news by one rule (``cluster/membership/members.py``,
``docs/design.md``): of two records of a member, the one at the higher incarnation wins, and
at equal incarnation the more severe state (ALIVE < SUSPECT < DEAD < LEFT); and a member told
that it is suspected or dead at an incarnation no lower than its own refutes at a higher one.
So right after a node takes in a datagram, its record of every member the datagram carried
news of (piggybacked updates, a join reply's members) is at least as new as that news, and
its own incarnation is above any suspicion or death of itself it was told of and at least
any life of itself it was told of; and no record goes back from what the node held after
the last datagram judged (a dead member revived by old news at its own incarnation). A
node that kept an older record (``stale_member_state``) ignored a refutation, a restart's
new life or a death -- so a live member stays down, or a dead one up, for as long as nothing
else repairs it.

The world hands :meth:`News.on_datagram` the datagram a node just took and the node's
member list after it (``Node.members()``, what ``meshlimit ctl members`` prints), only while
some node holds some member down (``wanted``: the views say so), since only then can an
ignored refutation matter; decoding costs. Members missing from the table after the
datagram (reaped into the roster, or never added) are not judged, nor is anything in a
cluster whose datagrams are sealed (a replay window may drop a duplicate before its news is
read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshlimit.cluster.wire import codec
from meshlimit.cluster.wire.messages import JoinReply, MemberState, MemberUpdate

from .events import NS_PER_S
from .history import Life
from .verdicts import Violation
from .windows import LifeKey

if TYPE_CHECKING:  # pragma: no cover
    from .network import Delivery

_STATES = {name: state for state, name in MemberState.NAMES.items()}
#: Findings kept.
MAX_FINDINGS = 20


def carries_join_reply(delivery: Delivery | None) -> bool:
    """Whether a datagram (unsealed) holds a join reply: what joins a node, by the design,
    told from the bytes as well as from the node's word (a node that takes itself for
    joined too early is a bug the checkers must see)."""
    if delivery is None:
        return False
    try:
        return any(isinstance(m, JoinReply) for m in codec.decode(delivery.payload).messages)
    except codec.DecodeError:
        return False


class News:
    """The verdict (see the module docstring)."""

    def __init__(self, *, sealed: bool) -> None:
        self.sealed = sealed
        self.wanted = False
        """Whether some running node holds some member down (set by the checkers)."""
        self.datagrams = 0
        """Datagrams judged."""
        self.heard: Callable[[Life, str, tuple[object, ...], int], None] | None = None
        """Told the messages of every datagram judged, with its sender (``sim/lifeguard.py``)."""
        self.findings: list[Violation] = []
        #: Each life's records after the last datagram judged: ``{member: (inc, state)}``.
        self._records: dict[LifeKey, dict[str, tuple[int, int]]] = {}

    def on_datagram(
        self,
        node: str,
        payload: bytes,
        members: list[tuple[str, object, str, int]],
        now: int,
        life: Life | None = None,
    ) -> None:
        """``node`` took ``payload``; ``members`` is its member list right after; ``life`` is
        the node's life (its records are compared with those it held before)."""
        if self.sealed:
            return
        try:
            envelope = codec.decode(payload)
        except codec.DecodeError:
            return
        if life is not None and self.heard is not None:  # told even past the findings kept
            self.heard(life, envelope.sender, tuple(envelope.messages), now)
        if len(self.findings) >= MAX_FINDINGS:
            return
        if life is not None:
            self._no_regression(node, life.key, envelope.sender, members, now)
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

    def _no_regression(
        self,
        node: str,
        life: LifeKey,
        sender: str,
        members: list[tuple[str, object, str, int]],
        now: int,
    ) -> None:
        """No record of another member may go back (to a lower incarnation, or a milder
        state at the same one) from what this life held after the last datagram judged: the
        table merges news by that order alone, so a dead member is revived only by a new
        incarnation. A member reaped since (missing) is not judged; the roster then holds
        its record, and a return to the table is at a higher incarnation."""
        held = {name: (inc, _STATES.get(state, -1)) for name, _, state, inc in members}
        before = self._records.get(life)
        self._records[life] = held
        if before is None:
            return
        for member, record in held.items():
            was = before.get(member)
            if (
                member != node
                and was is not None
                and record < was
                and len(self.findings) < MAX_FINDINGS
            ):
                self.findings.append(Violation(
                    "stale_member_state",
                    f"{node} took a datagram from {sender} at {now / NS_PER_S:.6f} s and went"
                    f" back from {MemberState.NAMES.get(was[1], '?')} at incarnation {was[0]}"
                    f" to {MemberState.NAMES.get(record[1], '?')} at incarnation {record[0]}"
                    f" for {member}", nodes=(node, member),
                ))  # fmt: skip

    def _find(self, node: str, sender: str, update: MemberUpdate, kept: str, now: int) -> None:
        if len(self.findings) >= MAX_FINDINGS:
            return
        news = f"{MemberState.NAMES.get(update.state, '?')} at incarnation {update.incarnation}"
        self.findings.append(Violation(
            "stale_member_state",
            f"{node} took news from {sender} at {now / NS_PER_S:.6f} s that {update.node} is"
            f" {news}, and kept {kept}", nodes=(node, update.node),
        ))  # fmt: skip
