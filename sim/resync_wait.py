"""A restarted owner waits for every peer it holds live before it decides at full capacity.

Theory of operation. A life that finds an earlier one of itself in the cluster resyncs
(``cluster/node/resync.py``): from its join on, until every peer it then held live has
handed back what it holds for it and said so (``HandoverDone``, at the new life's
incarnation or above), it decides the checks of its clients from its degraded quota. The
wait for a peer ends only with that peer's done, with the peer leaving the life's view of
live members, or after ``resync_wait_ns``. So a peer that sent nothing since the new life
started -- paused or down all along, up to the instant judged (however short its delays) --
and that the life held live throughout, still holds the life degraded: a full-capacity
admission by it while the peer was silent, before ``resync_wait_ns`` ran out, skipped the
wait (``resync_skipped``), and the counts that
peer holds for it (the replica's) were never back.

Judged at the end, for the final life of each running node in strict mode that did begin
a resync (``Node.stats["resyncs"]``, read, never changed), from the instant it began
(``History.resync_begun``: the world sees it; a later join reply may be the first to name
the earlier life), over the peers its view held by then, from the admissions the checkers
tallied at or after it (``LifeTally``: full ones are those not degraded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshlimit.cluster.node import Node

from .bounds import with_timer_slack
from .events import NS_PER_S
from .history import History

if TYPE_CHECKING:  # pragma: no cover
    from .checkers import Checkers


def _silent(history: History, node: str, start: int, end: int) -> bool:
    """Whether no life of ``node`` ran, unpaused, at any instant of ``[start, end]``."""
    if end < start:
        return False
    for life in history.lives.get(node, ()):
        low, high = max(start, life.started_at), min(end, life.stopped_at - 1)
        if low > high:
            continue
        if not any(p <= low and high < q for p, q in life.pauses):
            return False
    return True


def _first_full(checkers: Checkers, key: tuple[str, int], since: int) -> int | None:
    """The instant of the life's first admission at full capacity at or after ``since``
    (None: none)."""
    first = None
    for window in checkers.windows.values():
        tally = window.lives.get(key)
        if tally is None or not tally.full:
            continue
        degraded = {at for at, _ in tally.degraded_at}
        at = next((t for t in tally.times if t not in degraded and t >= since), None)
        if at is not None and (first is None or at < first):
            first = at
    return first


def skipped_resyncs(checkers: Checkers, nodes: dict[str, Node]) -> list[str]:
    """Final lives that decided at full capacity while a silent peer they held live could
    not yet have handed their counts back (see the module docstring)."""
    if checkers.local:
        return []
    history = checkers.history
    out = []
    for name, node in sorted(nodes.items()):
        life = history.life(name)
        view = checkers.views.get(life.key) if life is not None else None
        stats = getattr(node, "stats", None)  # the checkers' tests pass stand-ins
        if life is None or view is None or not stats or not stats["resyncs"] or not view.log:
            continue
        joined = view.log[0][0]
        # A life begins its resync when a join reply names its earlier life: the first,
        # or a later one (a first seed that never knew it); the world saw the instant.
        begun = history.resync_begun.get(life.key, joined)
        first = _first_full(checkers, life.key, begun)
        if first is None or first >= begun + with_timer_slack(node.config.resync_wait_ns):
            continue
        awaited = {who for at, who, _ in view.log if at <= begun and who != name}
        for peer in sorted(awaited):
            if view.live_throughout(peer, begun, first) and _silent(
                history, peer, life.started_at, first
            ):
                out.append(
                    f"{name} (life {life.number}) admitted at full capacity at"
                    f" {first / NS_PER_S:.6f} s, resyncing since {begun / NS_PER_S:.6f} s,"
                    f" while {peer}, live in its view, had sent nothing since it started"
                    f" ({life.started_at / NS_PER_S:.6f} s): its counts were not back"
                )
                break
    return out
