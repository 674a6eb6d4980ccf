"""The cluster node as a sans-IO state machine: routing, forwarding, replication,
rule sync and the degraded quota. Time, randomness and datagrams come in as
arguments; datagrams to send and events go out as return values."""

from meshlimit.cluster.node.events import Decided, Event, MembershipChanged, SeedsWanted
from meshlimit.cluster.node.node import Node

__all__ = ["Decided", "Event", "MembershipChanged", "Node", "SeedsWanted"]
