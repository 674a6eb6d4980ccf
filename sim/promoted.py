"""A crashed owner's counts at every holder of the ring that replaced it (``holder_behind``).

``docs/design.md`` (*Replication*, *Hand-over*): an owner's admissions leave for its
replicas with its answers, and when the ring changes, every counter whose holders changed
is handed, every slot, to the members new to its preference list -- the new owner (a
replica promoted) and the new replicas alike -- paced, a batch a gossip round. So when an
owner ``L`` crashes, its replica ``o`` holds ``L``'s slot; once ``o``'s ring drops ``L``
(the reaping) at ``J`` and holds still, ``o`` hands the counter to each new holder ``r`` of
the client, and by ``J + rounds x G + d`` every member of the client's preference list holds
``L``'s admissions. ``replica_behind`` compares a running owner's own slot only, which its
later answers carry to a new replica anyway; a crashed owner's slot reaches a new replica by
that hand-over alone.

Judged at the end, for each window still counted of a crashed (not departed) life ``L``
that decided it at full capacity: ``o`` is ``L``'s replica in ``L``'s last ring (formed
at ``K``) and the client's owner in ``o``'s final ring, still since ``J``; ``L``'s link to
``o`` clean from ``K`` to the crash, ``o`` running throughout; each other holder ``r``
of the final preference list running and started before ``J``, the link ``o -> r`` clean
since ``J``, and ``end >= J + pace(J) + d + G``; no clock of the three touched. Then ``r``
holds ``L``'s slot at least as ``L``'s full admissions made from ``K`` to one gossip round
and a delay before the crash. Added for the planted bug ``handover_skips_new_replicas`` (a ring change
hands a counter to its new owner only); the shipped scenario ``replica_promoted_long_window``
reaches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bounds import TICK_SLACK_NS, UNBOUNDED
from .events import NS_PER_S, SIM_EPOCH_NS

if TYPE_CHECKING:  # pragma: no cover
    from meshlimit.cluster.node import Node

    from .checkers import Checkers


def promoted_behind(checkers: Checkers, nodes: dict[str, Node], end: int) -> list[str]:
    """What each new holder lacks of a crashed owner's slot (see the module docstring)."""
    history, views, rings = checkers.history, checkers.views, checkers.rings
    knowledge = getattr(checkers, "knowledge", None)
    width = 1 + checkers.config.replicas
    lag = checkers.config.gossip_interval_ns + TICK_SLACK_NS
    out: list[str] = []
    if checkers.local or knowledge is None or width < 2:
        return out
    for (client, series, index), window in checkers.windows.items():
        if client in checkers.reset_clients or series.startswith("token_bucket"):
            continue
        if index < (SIM_EPOCH_NS + end) // checkers.window_ns(series) - 1:
            continue  # its holders may have swept it
        for (name, number), tally in window.lives.items():
            lives = history.lives.get(name, [])
            life = lives[number - 1] if 0 < number <= len(lives) else None
            view = None if life is None else views.get(life.key)
            if life is None or view is None or life.left or life.stopped_at >= end:
                continue
            crash, first = life.stopped_at, view.ring_history[-1][0]
            delay = history.delay_bound(first, end)
            cutoff = crash - lag - delay
            expected = sum(1 for at in tally.full_at if first <= at <= cutoff)
            if not expected or delay >= UNBOUNDED or history.clock_touched(name, end):
                continue
            ring = view.ring_history[-1][1] | {name}
            prefs = rings.preference(ring, client, width)
            if len(prefs) < 2 or prefs[0] != name:  # a ring of one: nobody to take over
                continue
            o = prefs[1]
            o_life = history.life(o)
            o_view = None if o_life is None else views.get(o_life.key)
            if o not in nodes or o_life is None or o_view is None or history.clock_touched(o, end):
                continue
            changed, final = o_view.ring_history[-1]
            holders = rings.preference(final | {o}, client, width)
            due = changed + knowledge.pace(changed) + delay + lag
            if (
                holders[0] != o
                or name in final
                or due > end
                or not o_life.running_through(first, end)
                or not history.link_clean(name, o, first, crash)
            ):
                continue
            for r in holders[1:]:
                r_life = history.life(r)
                if (
                    r not in nodes
                    or r_life is None
                    or r_life.started_at > changed
                    or not r_life.running_through(changed, end)
                    or history.clock_touched(r, end)
                    or not history.link_clean(o, r, changed, end)
                ):
                    continue
                held = held_in_window(nodes[r], series, client, name, index)
                if held is not None and held < expected:
                    out.append(
                        f"{r} holds {held} of crashed {name}'s {expected} admissions of"
                        f" {client} ({series}, window {index}) made before"
                        f" {cutoff / NS_PER_S:.3f} s, {(end - changed) / NS_PER_S:.1f} s after"
                        f" {o} took the client over"
                    )
    return out


def held_in_window(
    node: Node, series: str, client: str, name: str, index: int, *, earlier: int | None = 0
) -> int | None:
    """What ``node`` holds of slot ``name`` of ``client``'s window ``index`` (0: no
    counter); None once its counter has rolled past the window after it (the count is
    gone); ``earlier`` while its counter is still in an earlier window."""
    counter = node.counters.get(series, client)
    if counter is None:
        return 0
    if counter.window == index:
        return int(counter.cur.get(name))
    if counter.window == index + 1:
        return int(counter.prev.get(name))
    return None if counter.window > index + 1 else earlier
