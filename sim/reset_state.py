"""What a node holds at the end of a run for a client an operator reset: nothing from before.

Theory of operation. When a reset of a client reaches a node, the node forgets the client's
counts of every window that began before the reset (``CounterStore.reset``), and from then
on merges, for such a window, only the slots its peers name for the reset
(``replication.epoch_name``: counts they made after applying it); its own slot there holds
only what it admitted since. So at the end of a run, on a node the latest reset surely
reached (``Refusals.reached``: written there, or sent to it by a writer that held it alive
over a clean link, every wall clock true), a counter window that began before the reset
holds no slot of another node under that node's plain name. A plain slot there is a count
from before the reset that the node kept or merged again: a replica that never cleared
(the reset applied on the owner only), or a stale slot re-sent and merged. These are the
counts a replica would decide with once it took the client over, so the verdict does not
wait for a takeover to show them (``reset_not_kept``). Token buckets are not judged (an
arrival time has no slots).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshlimit.cluster.node import Node
from meshlimit.cluster.node.replication import EPOCH_SEP, epoch_name

from .events import NS_PER_S

if TYPE_CHECKING:  # pragma: no cover
    from .checkers import Checkers


def stale_after_reset(checkers: Checkers, nodes: dict[str, Node], end: int) -> list[str]:
    """Plain slots of other nodes, in windows begun before a reset that surely reached the
    holder (see the module docstring)."""
    out: list[str] = []
    history = checkers.history
    for client in sorted(checkers.reset_clients):
        for name, node in sorted(nodes.items()):
            life = history.life(name)
            if life is None or checkers.refusals.reached(client, life, end) is None:
                continue
            reset_ms = node.registry.reset_wall_ms(client)
            if reset_ms < 0:
                continue  # the reset never took effect here: not this verdict's to judge
            tag = epoch_name("", reset_ms)
            for series, window_ns in node.replication.series_windows.items():
                counter = node.counters.get(series, client)
                if counter is None or series.startswith("token_bucket"):
                    continue
                for index, slots in ((counter.window, counter.cur), (counter.window - 1,
                                                                     counter.prev)):  # fmt: skip
                    if index * window_ns >= reset_ms * 1_000_000:
                        continue  # began after the reset: every slot counts
                    stale = [
                        (slot, count)
                        for slot, count in slots.items()
                        if slot != name and not (EPOCH_SEP in slot and slot.endswith(tag))
                    ]
                    if stale:
                        out.append(
                            f"{name} holds {client}'s counts {stale} ({series}, window {index})"
                            f" from before the reset at {reset_ms / 1000:.3f} s wall, which"
                            f" surely reached it, at the end ({end / NS_PER_S:.3f} s)"
                        )
    return out
