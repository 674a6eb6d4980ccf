"""Joining: the seeds, when to ask the driver to resolve them again, and readiness.

Theory of operation. A node without seeds is a cluster of one and ready at once. A
node with seeds is *joining* until one of them answers (membership's ``joined``); until
then it is not ready, and the node decides every check against its degraded quota: it
does not know the ring, and a restarting node that took itself for the whole cluster
admitted clients owned elsewhere at full capacity.

Seeds are names the driver resolves (DNS: a Kubernetes headless service gives one
address per pod), and resolution may fail or lag. So:

- ``start`` takes the addresses resolved so far and whether the driver resolves names
  (``resolve``). Named seeds that resolved to nothing leave the node joining, never
  alone; seeds that resolved only to this node's own address make it a cluster of one
  (it is the seed, as the first pod of a StatefulSet is).
- While joining, the node asks its driver to resolve again (a ``SeedsWanted`` event)
  with exponential backoff, from one probe interval to ``RETRY_CAP_PROBES`` of them
  (``retry_delay_ns``); a new set of addresses restarts the join through them. Between
  the asks, membership re-sends its Join to the addresses it has every probe interval,
  so a seed that comes back at a known address is joined within a probe interval.
- Once joined it asks every push-pull interval and sends a Join to any resolved address
  that is no member's, so pieces of a cluster that booted apart (each seeing only
  itself in DNS) merge; membership's push-pull repairs the rest.
- ``leave`` ends readiness for good (the ring stays known: checks made while the driver
  drains are forwarded to the new owners).

State is a handful of scalars and the seed list (at most ``MAX_SEEDS`` addresses; more
are dropped and counted).
"""

from __future__ import annotations

from collections import Counter

from meshlimit.cluster.membership import Membership
from meshlimit.cluster.membership.timing import NEVER, backoff_ns
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.node.events import SeedsWanted
from meshlimit.cluster.node.link import Link
from meshlimit.cluster.wire.messages import Address, Join

#: The longest wait between two asks for fresh seed addresses, in probe intervals.
#: Why 16: 16 s on a LAN; DNS is asked rarely, and a seed that appears at an address
#: already known is joined within a probe interval by membership's own re-sends.
RETRY_CAP_PROBES = 16
#: Most seed addresses kept; a name resolving to more is cut here (counted).
#: Why 64: far more seeds than a cluster needs; a join goes to each of them.
MAX_SEEDS = 64


def retry_delay_ns(attempt: int, probe_interval_ns: int) -> int:
    """The wait after join attempt ``attempt`` (from 1): one probe interval, doubling
    each attempt, at most ``RETRY_CAP_PROBES`` of them."""
    return backoff_ns(attempt, probe_interval_ns, RETRY_CAP_PROBES)


class Joining:
    """The node's seeds, its join-retry schedule, and whether it is ready."""

    def __init__(
        self, config: NodeConfig, membership: Membership, link: Link, *, dropped: Counter[str]
    ) -> None:
        self._node_id = config.node_id
        self._addr = config.addr
        self._membership = membership
        self._timing = config.membership
        self._link = link
        self._dropped = dropped
        #: ``start`` was called (a node decides degraded before it).
        self.started = False
        #: The node left the cluster gracefully (it is never ready again).
        self.left = False
        self._awaiting = False  # named seeds resolved to no address yet
        self._seeds: tuple[Address, ...] = ()
        self._attempt = 0
        self._ask_at = NEVER

    @property
    def knows_ring(self) -> bool:
        """Started and joined (or alone by design): the members, and so the ring, are known."""
        return self.started and not self._awaiting and self._membership.joined

    @property
    def ready(self) -> bool:
        """Knows the ring and has not left: may decide at full capacity where it owns."""
        return self.knows_ring and not self.left

    @property
    def seeds(self) -> tuple[Address, ...]:
        """The seed addresses the join goes to (this node's own left out)."""
        return self._seeds

    @property
    def awaiting_seeds(self) -> bool:
        """Seeds were named but none has resolved to an address yet."""
        return self._awaiting

    def next_deadline(self) -> int:
        """When the driver is next asked for fresh seed addresses."""
        return self._ask_at

    def start(self, seeds: list[Address], *, now_ns: int, resolve: bool) -> None:
        """Join through ``seeds``; with ``resolve``, no address means "not resolved yet"."""
        assert not self.started, "a node starts once"
        self.started = True
        others = self._others(seeds)
        self._awaiting = resolve and not seeds
        if not self._awaiting:
            self._seeds = others
            self._link.send_all(self._membership.join(others, now_ns=now_ns))
        if resolve:
            self._ask_at = now_ns + retry_delay_ns(1, self._timing.probe_interval_ns)

    def set_seeds(self, seeds: list[Address], *, now_ns: int) -> None:
        """Fresh addresses for the seeds (the driver resolved them again)."""
        if not self.started or self.left or not seeds:
            return  # nothing resolved: keep what we have, membership keeps re-sending
        others = self._others(seeds)
        if self._membership.joined and not self._awaiting:
            known = {m.addr for m in self._membership.members()}
            join = Join(self._node_id, self._addr, self._membership.incarnation)
            for addr in others:
                if addr not in known:  # a piece of the cluster we have not met
                    self._link.send_to(addr, join)
            return
        if others and others == self._seeds:
            return  # membership is already re-sending to these
        if not others and not self._awaiting:
            return  # once other seeds were known, DNS naming only us is not "alone"
        self._awaiting = False
        self._seeds = others
        self._link.send_all(self._membership.join(others, now_ns=now_ns))

    def tick(self, *, now_ns: int) -> list[SeedsWanted]:
        """Ask the driver for fresh seed addresses when due."""
        if now_ns < self._ask_at:
            return []
        if self.left:
            self._ask_at = NEVER
            return []
        self._attempt += 1
        if self.ready:
            self._ask_at = now_ns + self._timing.push_pull_interval_ns
        else:
            self._ask_at = now_ns + retry_delay_ns(self._attempt, self._timing.probe_interval_ns)
        return [SeedsWanted(self._attempt)]

    def leave(self) -> None:
        """The node left: never ready again, no more asks."""
        self.left = True
        self._ask_at = NEVER

    def _others(self, seeds: list[Address]) -> tuple[Address, ...]:
        """``seeds`` without this node's own address and duplicates, at most MAX_SEEDS."""
        others = tuple(dict.fromkeys(s for s in seeds if s != self._addr))
        if len(others) > MAX_SEEDS:
            self._dropped["seeds_over_limit"] += len(others) - MAX_SEEDS
            others = others[:MAX_SEEDS]
        return others
