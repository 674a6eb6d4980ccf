"""Hybrid logical clock stamps: a total order for rule changes made on any node.

A stamp is ``(wall_ms, counter, node)``. It follows the physical clock when
clocks move forward and falls back on the counter when they do not, so a
node whose clock runs behind still orders its new writes after every write
it has seen (Kulkarni et al., "Logical Physical Clocks", 2014). Ties between
nodes break on the node id, so any two distinct stamps are ordered and
last-writer-wins merges agree on every node.

Pure values: time comes in as ``now_ns``.
"""

from __future__ import annotations

from typing import NamedTuple

NS_PER_MS = 1_000_000


class Stamp(NamedTuple):
    """A hybrid-logical-clock stamp; tuple order is the causal-then-wall order."""

    wall_ms: int
    counter: int
    node: str


ZERO = Stamp(0, 0, "")


def next_stamp(last: Stamp, node: str, *, now_ns: int) -> Stamp:
    """The stamp for a local event: after ``last`` and no earlier than the wall clock."""
    wall_ms = now_ns // NS_PER_MS
    if wall_ms > last.wall_ms:
        return Stamp(wall_ms, 0, node)
    return Stamp(last.wall_ms, last.counter + 1, node)


def observe(last: Stamp, remote: Stamp, node: str, *, now_ns: int) -> Stamp:
    """The clock after receiving ``remote``: after both it and ``last``."""
    wall_ms = now_ns // NS_PER_MS
    top = max(wall_ms, last.wall_ms, remote.wall_ms)
    if top == wall_ms and wall_ms > last.wall_ms and wall_ms > remote.wall_ms:
        return Stamp(wall_ms, 0, node)
    if last.wall_ms == remote.wall_ms == top:
        counter = max(last.counter, remote.counter) + 1
    elif top == last.wall_ms:
        counter = last.counter + 1
    else:
        counter = remote.counter + 1
    return Stamp(top, counter, node)


def drift_ms(stamp: Stamp, *, now_ns: int) -> int:
    """How far a stamp runs ahead of our wall clock (positive: the sender's clock is ahead)."""
    return stamp.wall_ms - now_ns // NS_PER_MS
