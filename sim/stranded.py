"""Stranded forwards: a check waiting at an owner its asker stopped holding alive.

``docs/design.md`` (*Degraded mode*, case 3): checks already forwarded to an owner when it
stops being known alive "are decided at that instant (``stranded_forwards``), not at their
forward timeout" -- detection ends the wait. The node does it in the very input that
applied the membership change (``Node._after_membership_input``), so the answer and the
event reach the checkers at the same instant.

One verdict, ``stranded_wait``: a forwarded check asked of owner ``o`` at ``s`` and answered
at ``t`` by a life whose view, at some instant ``x`` with ``s <= x`` and ``x + slack < t``,
ended that instant holding ``o`` anything but ALIVE (suspect, dead, left, or gone from the
table). The view is the life's own events (:mod:`~meshlimit.sim.views`); the state judged is
the one after the last event of instant ``x``, as the node compares its states before and
after each input (a suspicion refuted within one input strands nothing). ``slack`` is one
late timer tick: the same instant by design.

Added for the planted bug ``stranded_not_released`` (``Degraded.stranded`` returns nothing:
such checks wait for their forward timeout and are then answered from the same degraded
quota, so every count and bound stays the same; only the wait breaks the design).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshlimit.cluster.wire.messages import MemberState

if TYPE_CHECKING:  # pragma: no cover
    from .history import Life
    from .views import View

#: One late tick: a stranded check is answered in the input that applied the event.
STRANDED_SLACK_NS = 1_000_000
Finding = Callable[[str, "Life", str, int, str], None]


def stranded_since(view: View, owner: str, asked_at: int, answered_at: int) -> int | None:
    """The first instant in ``[asked_at, answered_at - slack)`` after whose events ``view``
    held ``owner`` anything but ALIVE, or None. Scans the view's log backwards from its end:
    a check waits a forward timeout at most, so only the last few events are read."""
    log = view.log
    index = len(log)
    while index and log[index - 1][0] >= asked_at:
        index -= 1
    first: int | None = None
    state_at: dict[int, int] = {}  # the owner's state after each instant's last event
    for at, member, state in log[index:]:
        if member == owner:
            state_at[at] = state
    for at in sorted(state_at):
        if at + STRANDED_SLACK_NS >= answered_at:
            break
        if state_at[at] != MemberState.ALIVE:
            first = at
            break
    return first


def judge_stranded(
    finding: Finding, life: Life, view: View, client: str, owner: str, asked_at: int, now: int
) -> None:
    """A forwarded check of ``client`` asked of ``owner`` at ``asked_at``, answered ``now``."""
    if now - asked_at <= STRANDED_SLACK_NS:
        return
    since = stranded_since(view, owner, asked_at, now)
    if since is not None:
        finding(
            "stranded_wait", life, client, now,
            f"a check forwarded to {owner} at {asked_at / 1e9:.6f} s was answered"
            f" {(now - since) / 1e6:.1f} ms after the asker stopped holding {owner} alive"
            f" ({since / 1e9:.6f} s): stranded checks are decided at that instant",
        )  # fmt: skip
