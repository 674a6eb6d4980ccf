"""Degraded admissions re-sent while their owner is unreachable (``report_behind``).

``docs/design.md`` (*Degraded mode*) and ``cluster/node/degraded.py``: a degraded admission
is re-sent, with the client's replicas, *while the owner is unreachable* (it can only merge
it once it hears us), then ``DEGRADED_RESENDS`` more times once it is alive again; at most
``DEGRADED_RESENDS_PER_S`` go a second, each every ``ceil(waiting / budget)`` gossip rounds.
So while a node ``D``'s view holds a client's owner anything but ALIVE, ``D`` keeps sending
its slot to the client's replicas: a replica that a cut kept from the first sends has it a
few rounds after the link is clean again, though no ring changed and no member came back
(nothing else hands it over). ``replica_behind`` judges degraded reports only over a link
clean since the window's first admission, so a cut during the first sends hid it.

Judged at the end, strict mode, for each window still counted of a running life ``D`` that
decided it degraded only, its ring unchanged since the window's first admission: ``D``'s
view held the owner (``D``'s final ring) anything but ALIVE from ``D``'s last admission in
the window to the end; a replica ``R`` ran, and the link ``D -> R`` was clean, over the last
``rounds x G + G + d`` (``rounds = ceil(waiting / budget)``, ``waiting`` at most the windows
``D`` decided degraded); no clock of the two touched. Then ``R`` holds ``D``'s slot at least
as ``D``'s admissions before that span. Added for the planted bug
``degraded_resends_spent_cut_off`` (re-sends spent while the owner is unreachable); the
shipped scenario ``degraded_report_after_cut`` reaches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshlimit.cluster.node.config import per_round
from meshlimit.cluster.node.degraded import DEGRADED_RESEND_MIN, DEGRADED_RESENDS_PER_S
from meshlimit.cluster.wire.messages import MemberState

from .bounds import TICK_SLACK_NS, UNBOUNDED
from .events import NS_PER_S, SIM_EPOCH_NS
from .promoted import held_in_window

if TYPE_CHECKING:  # pragma: no cover
    from meshlimit.cluster.node import Node

    from .checkers import Checkers
    from .views import View


def _unreachable_since(view: View, owner: str, since: int, end: int) -> bool:
    """Whether ``view`` held ``owner`` anything but ALIVE at every instant of
    ``[since, end]`` (from the state after the events of ``since`` on)."""
    state = None
    for at, member, new_state in view.log:
        if at > end:
            break
        if member != owner:
            continue
        if at <= since:
            state = new_state
        elif new_state == MemberState.ALIVE:
            return False
    return state is not None and state != MemberState.ALIVE


def reports_behind(checkers: Checkers, nodes: dict[str, Node], end: int) -> list[str]:
    """What each replica lacks of a node's degraded slot (see the module docstring)."""
    history, config = checkers.history, checkers.config
    if checkers.local:
        return []
    gossip = config.gossip_interval_ns
    counted = [
        key for key in checkers.windows
        if not key[1].startswith("token_bucket") and key[0] not in checkers.reset_clients
        and key[2] >= (SIM_EPOCH_NS + end) // checkers.window_ns(key[1]) - 1
    ]  # fmt: skip
    budget = per_round(DEGRADED_RESENDS_PER_S, gossip, DEGRADED_RESEND_MIN)
    rounds = 1 + -(-len(counted) // budget)
    out: list[str] = []
    for client, series, index in counted:
        window = checkers.windows[(client, series, index)]
        for (name, number), tally in window.lives.items():
            life = history.life(name)
            node = nodes.get(name)
            view = None if life is None else checkers.views.get(life.key)
            if node is None or life is None or view is None or life.number != number:
                continue
            if tally.full or not tally.degraded or history.clock_touched(name, end):
                continue
            if any(at >= tally.times[0] for at, _ in view.ring_history):
                continue  # a ring change hands counters over: replica_behind's case
            delay = history.delay_bound(tally.times[0], end)
            start = end - rounds * gossip - gossip - delay - TICK_SLACK_NS
            prefs = node.ring.preference_list(client, 1 + config.replicas)
            if (
                delay >= UNBOUNDED
                or start <= tally.times[-1]
                or not life.running_through(start, end)
                or not _unreachable_since(view, prefs[0], tally.times[-1], end)
            ):
                continue
            for target in prefs[1:]:
                peer = history.life(target)
                if (
                    target == name
                    or target not in nodes
                    or peer is None
                    or not peer.running_through(start, end)
                    or history.clock_touched(target, end)
                    or not history.link_clean(name, target, start, end)
                ):
                    continue
                held = held_in_window(nodes[target], series, client, name, index, earlier=None)
                if held is not None and held < tally.total:
                    out.append(
                        f"{target} holds {held} of {name}'s {tally.total} degraded admissions"
                        f" of {client} ({series}, window {index}), the last at"
                        f" {tally.times[-1] / NS_PER_S:.3f} s, though {prefs[0]} stayed"
                        f" unreachable for {name} and the link was clean from"
                        f" {start / NS_PER_S:.3f} s"
                    )
    return out
