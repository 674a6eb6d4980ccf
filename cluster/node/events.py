"""What a node reports to its driver through ``Node.events()``: decisions for checks
that waited on the network, membership changes, and requests for fresh seed
addresses. Frozen values, nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from meshlimit.cluster.membership import MemberEvent
from meshlimit.cluster.wire.frozen import builder
from meshlimit.core.decision import Decision


@dataclass(frozen=True, slots=True)
class Decided:
    """A check that waited on the network has been decided."""

    ticket: int
    client: str
    decision: Decision


#: ``Decided(...)`` at a fifth of the cost (``cluster/wire/frozen.py``): one per forwarded
#: check.
decided_event = builder(Decided)


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """A member joined, changed state or left (from SWIM)."""

    event: MemberEvent


@dataclass(frozen=True, slots=True)
class SeedsWanted:
    """Time to resolve the seed names again and pass the addresses to ``Node.set_seeds``.

    Before the node has joined this comes with backoff (``attempt`` counts from 1);
    after, now and then, so that a cluster started in pieces (each piece's seeds
    named only itself at first) finds the rest. A driver whose seeds are fixed
    addresses may ignore it: membership keeps re-sending its joins regardless."""

    attempt: int


Event = Decided | MembershipChanged | SeedsWanted
