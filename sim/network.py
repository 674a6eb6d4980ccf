"""The simulated network: latency, jitter, loss, duplication, reordering, clogs and partitions.

Theory of operation. The network holds no packets. ``send`` decides, at send
time and from its own ``random.Random``, what happens to a datagram and
returns the scheduled deliveries -- zero, one, or two when it is duplicated --
as ``(deliver_at_ns, Delivery)``; the driver puts them in its event queue.
When a delivery's time comes the driver calls ``deliver``, which checks the
link again: a datagram in flight when a partition starts is dropped on
arrival if its link is cut *then*, as a real cut cable loses what is on it
(a datagram sent during a partition that heals before it would arrive is
still dropped, at send time). Both count in ``stats.dropped_partition``.

Reachability is the conjunction of every active fault:

* ``partition(groups)``: nodes in different groups cannot reach each other.
  Nodes named in no group form one implicit *remainder* group together, so
  ``partition([{a}])`` splits ``a`` from everyone else, nodes that join later
  land in the remainder, and a partition need not list every node. A new
  ``partition`` replaces the previous one; the other faults add up.
* ``partition_one_way(src_group, dst_group)``: datagrams from ``src_group`` to
  ``dst_group`` are cut; the reverse direction still works.
* ``isolate(node)``: the node can neither send nor receive.
* ``cut(a, b)`` and ``flap(a, b, ...)``: one link down, or down and up in turns.
* ``heal()`` removes all of the above (not link configurations, not clogs).

A node always reaches itself. Crashed or paused nodes are the driver's
business: the network does not know about node processes.

Delays: ``latency_ns`` plus jitter (lognormal with median ``jitter_ns``, capped,
or uniform in ``[0, jitter_ns]``), plus with probability ``reorder`` an extra
uniform delay up to ``reorder_ns`` that lets later datagrams overtake it.
Bandwidth is modelled as a queue: a datagram starts transmitting when the link
(and, for a clogged node, its interface) is free and occupies it for
``size / bytes_per_s``. A clogged node's inbound queue is accounted at send
time, in send order -- an approximation that keeps the network stateless
between calls.

Determinism: random draws happen in a fixed order per ``send`` and only for
features whose probability or size is non-zero, so a run is a function of
the rng seed and the sequence of calls. Float draws (lognormal) go through
libm; a run is bit-for-bit reproducible on one platform.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass

from meshlimit.cluster.wire.frozen import builder
from meshlimit.sim.events import NS_PER_MS, NS_PER_S

Node = Hashable

JITTER_DISTRIBUTIONS = ("lognormal", "uniform")


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """How one directed link (or, as the default, every link) behaves."""

    latency_ns: int = NS_PER_MS
    """Base one-way delay. Why 1 ms: a busy LAN; a forwarded check then costs a visible RTT."""
    jitter_ns: int = 0
    """Scale of the random extra delay (median for lognormal, maximum for uniform)."""
    jitter_dist: str = "lognormal"
    """``lognormal`` (a long tail, like real networks) or ``uniform`` (bounded, for tests)."""
    jitter_sigma: float = 0.5
    """Shape of the lognormal; why 0.5: p99 is about 3.2x the median, a moderate tail."""
    jitter_cap_factor: int = 20
    """Lognormal jitter is capped at this many ``jitter_ns``, so every delay stays bounded."""
    loss: float = 0.0
    """Probability that a datagram is lost."""
    duplicate: float = 0.0
    """Probability that a datagram is delivered twice (the copy has its own delay)."""
    reorder: float = 0.0
    """Probability that a datagram gets an extra delay, so that later ones overtake it."""
    reorder_ns: int = 0
    """Largest extra delay of a reordered datagram (uniform in ``[0, reorder_ns]``)."""
    bandwidth_bytes_per_s: int = 0
    """Link capacity; 0 is unlimited. A full link queues datagrams (a clog)."""

    def __post_init__(self) -> None:
        for name in ("latency_ns", "jitter_ns", "reorder_ns", "bandwidth_bytes_per_s"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"LinkConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"LinkConfig.{name} must be a probability in [0, 1], got {value!r}"
                )
        if self.jitter_dist not in JITTER_DISTRIBUTIONS:
            raise ValueError(f"LinkConfig.jitter_dist must be one of {JITTER_DISTRIBUTIONS}")
        if self.jitter_sigma < 0 or self.jitter_cap_factor < 1:
            raise ValueError("LinkConfig.jitter_sigma must be >= 0 and jitter_cap_factor >= 1")


@dataclass(frozen=True, slots=True)
class Delivery:
    """A datagram on its way: who sent it, to whom, the bytes, and when it left."""

    src: Node
    dst: Node
    payload: bytes
    sent_at_ns: int = 0
    copy: int = 0
    """0 for the original, 1 for the duplicate."""


#: ``Delivery(...)`` at a fifth of the cost (``cluster/wire/frozen.py``): one per datagram.
_delivery = builder(Delivery)


@dataclass(slots=True)
class NetworkStats:
    """Counters. ``dropped_partition`` counts drops at send time and at delivery time."""

    sent: int = 0
    delivered: int = 0
    dropped_loss: int = 0
    dropped_partition: int = 0
    duplicated: int = 0
    bytes_sent: int = 0
    in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for reports and trace digests)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Flap:
    a: Node
    b: Node
    start_ns: int
    period_ns: int
    until_ns: int

    def cuts(self, src: Node, dst: Node, now_ns: int) -> bool:
        if not (self.start_ns <= now_ns < self.until_ns):
            return False
        if (src, dst) != (self.a, self.b) and (src, dst) != (self.b, self.a):
            return False
        return (now_ns - self.start_ns) // self.period_ns % 2 == 0  # down first, then up


def transmit_ns(size_bytes: int, bytes_per_s: int) -> int:
    """Time to put ``size_bytes`` on a wire of ``bytes_per_s``, rounded up to whole ns."""
    return -(-size_bytes * NS_PER_S // bytes_per_s)


class Network:
    """The simulated datagram network between node ids (any hashable values)."""

    def __init__(self, rng: random.Random, default: LinkConfig | None = None) -> None:
        self._rng = rng
        self._default = default if default is not None else LinkConfig()
        self._links: dict[tuple[Node, Node], LinkConfig] = {}
        self._group_of: dict[Node, int] = {}
        self._one_way: list[tuple[frozenset[Node], frozenset[Node]]] = []
        self._isolated: set[Node] = set()
        self._cut: set[tuple[Node, Node]] = set()
        self._flaps: list[_Flap] = []
        self._clog: dict[Node, int] = {}
        self._link_free_ns: dict[tuple[Node, Node], int] = {}
        self._egress_free_ns: dict[Node, int] = {}
        self._ingress_free_ns: dict[Node, int] = {}
        #: Whether any partition, cut, isolation or flap is in force: without one every
        #: datagram gets through and ``reachable`` need not be asked (the common case).
        self._cuts = False
        self.stats = NetworkStats()

    # --- configuration ------------------------------------------------------------------

    @property
    def default(self) -> LinkConfig:
        """The configuration of every link without its own."""
        return self._default

    def set_default(self, config: LinkConfig) -> None:
        """Replace the configuration of every link that has no override."""
        self._default = config

    def set_link(self, src: Node, dst: Node, config: LinkConfig | None) -> None:
        """Override the directed link ``src -> dst``; ``None`` returns it to the default."""
        if config is None:
            self._links.pop((src, dst), None)
        else:
            self._links[(src, dst)] = config

    def link(self, src: Node, dst: Node) -> LinkConfig:
        """The configuration in force on the directed link ``src -> dst``."""
        return self._links.get((src, dst), self._default)

    def clog(self, node: Node, bytes_per_s: int) -> None:
        """Limit ``node``'s interface, both directions, to ``bytes_per_s``; 0 unclogs it."""
        assert bytes_per_s >= 0
        if bytes_per_s:
            self._clog[node] = bytes_per_s
        else:
            self._clog.pop(node, None)

    # --- faults -------------------------------------------------------------------------

    def partition(self, groups: Iterable[Iterable[Node]]) -> None:
        """Split nodes into groups that cannot reach each other (replaces any partition).

        Unnamed nodes form one remainder group together (see the module docstring).
        """
        group_of: dict[Node, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                assert node not in group_of, f"{node!r} is in two partition groups"
                group_of[node] = index
        self._group_of = group_of
        self._cuts = True

    def partition_one_way(self, src_group: Iterable[Node], dst_group: Iterable[Node]) -> None:
        """Cut datagrams from any node of ``src_group`` to any of ``dst_group``, not back."""
        self._one_way.append((frozenset(src_group), frozenset(dst_group)))
        self._cuts = True

    def isolate(self, node: Node) -> None:
        """Cut every link to and from ``node``."""
        self._isolated.add(node)
        self._cuts = True

    def cut(self, a: Node, b: Node, *, both_ways: bool = True) -> None:
        """Cut the link ``a -> b`` (and ``b -> a`` unless ``both_ways`` is false)."""
        self._cut.add((a, b))
        if both_ways:
            self._cut.add((b, a))
        self._cuts = True

    def flap(self, a: Node, b: Node, *, start_ns: int, period_ns: int, until_ns: int) -> None:
        """Take the ``a <-> b`` link down for ``period_ns``, then up as long, ... until then."""
        assert period_ns > 0 and until_ns >= start_ns
        self._flaps.append(_Flap(a, b, start_ns, period_ns, until_ns))
        self._cuts = True

    def heal(self) -> None:
        """Remove every partition, isolation, cut and flap; link configs and clogs stay."""
        self._group_of = {}
        self._one_way.clear()
        self._isolated.clear()
        self._cut.clear()
        self._flaps.clear()
        self._cuts = False

    def reachable(self, src: Node, dst: Node, *, now_ns: int) -> bool:
        """Whether a datagram from ``src`` to ``dst`` gets through the faults at ``now_ns``."""
        if src == dst:
            return True
        group_of = self._group_of
        if group_of and group_of.get(src, -1) != group_of.get(dst, -1):
            return False
        if src in self._isolated or dst in self._isolated or (src, dst) in self._cut:
            return False
        for src_group, dst_group in self._one_way:
            if src in src_group and dst in dst_group:
                return False
        return not any(flap.cuts(src, dst, now_ns) for flap in self._flaps)

    # --- datagrams ----------------------------------------------------------------------

    def send(
        self, src: Node, dst: Node, payload: bytes, *, now_ns: int
    ) -> list[tuple[int, Delivery]]:
        """Send a datagram; return its scheduled deliveries ``[(deliver_at_ns, Delivery)]``."""
        stats = self.stats
        stats.sent += 1
        stats.bytes_sent += len(payload)
        if self._cuts and not self.reachable(src, dst, now_ns=now_ns):
            stats.dropped_partition += 1
            return []
        config = self._links.get((src, dst), self._default) if self._links else self._default
        if self._clog or config.bandwidth_bytes_per_s:
            depart_ns = self._departure_ns(src, dst, len(payload), config, now_ns)
        else:
            depart_ns = now_ns
        rng = self._rng
        if config.loss and rng.random() < config.loss:
            stats.dropped_loss += 1
            return []
        if not (config.duplicate and rng.random() < config.duplicate):
            # One copy, the common case; with neither jitter nor reordering, no draw either.
            stats.in_flight += 1
            if config.jitter_ns or config.reorder:
                at_ns = depart_ns + self._delay_ns(config)
            else:
                at_ns = depart_ns + config.latency_ns
            if self._clog:
                at_ns = self._arrival_ns(dst, len(payload), at_ns)
            return [(at_ns, _delivery(src, dst, payload, now_ns, 0))]
        stats.duplicated += 1
        stats.in_flight += 2
        deliveries = []
        for copy in range(2):
            at_ns = depart_ns + self._delay_ns(config)
            if self._clog:
                at_ns = self._arrival_ns(dst, len(payload), at_ns)
            deliveries.append((at_ns, _delivery(src, dst, payload, now_ns, copy)))
        return deliveries

    def deliver(self, delivery: Delivery, *, now_ns: int) -> bool:
        """A delivery's time has come: ``True`` if it arrives, ``False`` if a cut drops it now."""
        stats = self.stats
        assert stats.in_flight > 0, "deliver() without a matching send()"
        stats.in_flight -= 1
        if self._cuts and not self.reachable(delivery.src, delivery.dst, now_ns=now_ns):
            stats.dropped_partition += 1
            return False
        stats.delivered += 1
        return True

    def _departure_ns(
        self, src: Node, dst: Node, size: int, config: LinkConfig, now_ns: int
    ) -> int:
        """When the last byte leaves: after the sender's interface, then the link, are free."""
        done_ns = now_ns
        clog = self._clog.get(src)
        if clog:
            done_ns = max(done_ns, self._egress_free_ns.get(src, 0)) + transmit_ns(size, clog)
            self._egress_free_ns[src] = done_ns
        if config.bandwidth_bytes_per_s:
            start_ns = max(done_ns, self._link_free_ns.get((src, dst), 0))
            done_ns = start_ns + transmit_ns(size, config.bandwidth_bytes_per_s)
            self._link_free_ns[(src, dst)] = done_ns
        return done_ns

    def _arrival_ns(self, dst: Node, size: int, at_ns: int) -> int:
        """A clogged receiver takes the datagram in only when its interface is free."""
        clog = self._clog.get(dst)
        if clog:
            at_ns = max(at_ns, self._ingress_free_ns.get(dst, 0)) + transmit_ns(size, clog)
            self._ingress_free_ns[dst] = at_ns
        return at_ns

    def _delay_ns(self, config: LinkConfig) -> int:
        rng = self._rng
        delay_ns = config.latency_ns
        jitter_ns = config.jitter_ns
        if jitter_ns:
            if config.jitter_dist == "uniform":
                delay_ns += rng.randint(0, jitter_ns)
            else:
                sample = jitter_ns * rng.lognormvariate(0.0, config.jitter_sigma)
                delay_ns += min(int(sample), jitter_ns * config.jitter_cap_factor)
        if config.reorder and rng.random() < config.reorder:
            delay_ns += rng.randint(0, config.reorder_ns)
        return delay_ns

    def _check(self) -> None:
        """Assert the conservation of datagrams (for tests)."""
        s = self.stats
        accounted = s.delivered + s.dropped_loss + s.dropped_partition + s.in_flight
        assert s.sent + s.duplicated == accounted, f"datagrams not conserved: {s}"
