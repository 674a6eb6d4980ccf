"""An in-memory link (``tests/test_node_links.py``) that can also partition and restart.

:class:`PartitionLink` is :class:`test_node_links.Link` with two more faults: a
partition (datagrams between groups are lost both ways until ``heal``) and a restart (a
new life of a node under the same name and address, with no memory of the old one and
its own random stream, as a restarted process has). Nodes may get config overrides
(``expected_members``, membership timings) per link.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from test_node_links import Link, cluster

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.node import Node


class PartitionLink(Link):
    """A :class:`Link` with partitions, restarts and per-node config overrides."""

    def __init__(self, default_rule: str = "5/hour", **overrides: Any) -> None:
        super().__init__(default_rule, **overrides)
        self.cut: set[tuple[str, str]] = set()

    def restart(self, name: str, *, seeds: Iterable[str]) -> Node:
        """Crash ``name`` and start a new life of it at once (no memory of the old one)."""
        self.crash(name)
        return self.add(name, seeds=seeds)

    def partition(self, *groups: str) -> None:
        """Cut every link between the groups (each a string of node names), both ways."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                self.cut |= {(a, b) for a in group for b in other}
                self.cut |= {(b, a) for a in group for b in other}

    def heal(self) -> None:
        self.cut.clear()

    def carry(self, src: str, dst: str, datagram: bytes, sender: Node) -> bool:
        return (src, dst) not in self.cut


def partition_cluster(names: str = "abcde", **overrides: Any) -> PartitionLink:
    """A joined cluster of ``names`` (the first is every other's seed) on a PartitionLink."""
    return cluster(names, kind=PartitionLink, **overrides)


def membership(**changes: Any) -> MembershipConfig:
    """The simulator's membership preset with ``changes``."""
    return replace(MembershipConfig.sim(), **changes)
