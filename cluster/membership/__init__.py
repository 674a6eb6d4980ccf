"""SWIM membership as a sans-IO state machine: who is in the cluster and alive.

The modules, after hashicorp/memberlist: ``timing`` (the config, its presets and formulas),
``members`` (the member table and how news merges into it), ``roster`` (reaped members
that still count toward the cluster's size, and tombstones), ``suspicion`` (Lifeguard's
timer), ``awareness`` (Lifeguard's local health score), ``broadcasts`` (the piggyback
queue), ``probes`` (probe order and measurements) and ``swim`` (the protocol: probes,
indirect probes, join, leave, gossip, events).
"""

from meshlimit.cluster.membership.members import Member, MemberEvent
from meshlimit.cluster.membership.suspicion import lifeguard_timeout_ns
from meshlimit.cluster.membership.swim import Membership, Outputs
from meshlimit.cluster.membership.timing import (
    MembershipConfig,
    expected_confirmations,
    retransmit_limit,
    suspicion_timeout_ns,
)

__all__ = [
    "Member",
    "MemberEvent",
    "Membership",
    "MembershipConfig",
    "Outputs",
    "expected_confirmations",
    "lifeguard_timeout_ns",
    "retransmit_limit",
    "suspicion_timeout_ns",
]
