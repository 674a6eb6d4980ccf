"""What a node reports to its driver through ``Node.events()``: decisions for checks
that waited on the network, and membership changes. Frozen values, nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from meshlimit.cluster.membership import MemberEvent
from meshlimit.core.decision import Decision


@dataclass(frozen=True, slots=True)
class Decided:
    """A check that waited on the network has been decided."""

    ticket: int
    client: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """A member joined, changed state or left (from SWIM)."""

    event: MemberEvent


Event = Decided | MembershipChanged
