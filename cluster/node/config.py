"""The node's configuration: one frozen dataclass, with presets.

Only the daemon reads files and environment variables; everything below it
takes a :class:`NodeConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import mmh3

from meshlimit.cluster.membership import MembershipConfig
from meshlimit.cluster.wire.messages import Address
from meshlimit.core.engine import check_max_clients

_MS = 1_000_000
_US = 1_000


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to know besides time, randomness and packets."""

    node_id: str
    """This node's unique id in the cluster."""
    addr: Address
    """The UDP address peers reach this node at."""
    mode: str = "strict"
    """``strict``: the owner decides every check. ``local``: every node decides on its merged
    view. Why strict: it never over-admits while the cluster is healthy."""
    default_rule: str = "100/minute"
    """The rule for clients without one; changes later spread as rule entries."""
    replicas: int = 1
    """Ring successors that receive the owner's counts. Why 1: a single crash then loses
    nothing; every extra replica costs one more datagram per gossip round per owner."""
    degraded_fraction: float = 0.5
    """Share of a client's capacity that the nodes cut off from its owner may admit between
    them, per window (``degraded_units``). 0 fails closed. Why 0.5: during a failure a client
    keeps half its rate and the cluster admits at most 1.5x the capacity (``docs/design.md``)."""
    expected_members: int = 0
    """The cluster's size as deployed, if the operator states it. The majority rule then
    counts at least this many members (a minority whose every node restarted without
    memory still knows it is one), and a node that has not joined yet takes its degraded
    share as one of at least this many. Why 0 (unstated): a cluster may grow and shrink
    without a config change; the size is then learnt from the members (a node still
    joining assumes its seeds and itself)."""
    forward_timeout_ns: int = 200 * _MS
    """A forwarded check unanswered this long is decided in degraded mode. Why 200 ms: far
    above a LAN round trip, short enough that callers are not held up for long."""
    batch_window_ns: int = 0
    """How long forwarded checks wait to share a datagram. Why 0: the checks made in one
    turn of the driver's event loop leave together at the end of it, which batches as
    much as load allows (37 checks a datagram at 256 concurrent callers, measured) with
    no added latency; a positive window trades latency for fuller datagrams at low load
    (gubernator uses 500 us; uvloop rounds sub-millisecond timers to zero, so use >= 1 ms)."""
    gossip_interval_ns: int = 100 * _MS
    """Counter deltas (replication, local mode, degraded reports) are sent this often. Why
    100 ms: it bounds local mode's over-admission to what peers admit in 100 ms."""
    anti_entropy_interval_ns: int = 2_000 * _MS
    """Rule digests are compared with one random member this often. Why 2 s: rules change
    rarely; a lost rule message is repaired within seconds."""
    datagram_budget: int = 1400
    """Largest datagram sent. Why 1,400: fits an Ethernet MTU with IP/UDP headers."""
    max_pending: int = 100_000
    """Most forwarded checks awaiting an answer; beyond it checks are decided degraded."""
    max_pending_per_owner: int = 20_000
    """Most forwarded checks awaiting one owner; beyond it checks for that owner are
    answered ``overloaded`` (refused, retry after the forward timeout, counted nowhere but
    in stats) rather than degraded: a busy owner is not an unreachable one. Why 20,000:
    100k checks/s for the 200 ms forward timeout spread over a few owners."""
    max_clients: int = 1_000_000
    """Most (client, series) counters held; beyond it new clients are refused and counted."""
    max_dirty: int = 200_000
    """Most counters awaiting replication; beyond it the oldest are dropped and counted."""
    handover_bytes_per_round: int = 64 * 1024
    """Most counter bytes a hand-over sends per gossip round (at least one counter goes).
    Why 64 KiB: 640 KB/s at the default gossip interval, a small share of a LAN link, so a
    ring change never crowds out probes and forwarded checks; a hand-over of the ~1/n of
    100k counters that change holders still ends within a few seconds."""
    resync_wait_ns: int = 10_000 * _MS
    """Longest a restarted node decides its own clients from the degraded quota while it
    waits for its peers to hand its counts back (``cluster/node/resync.py``); past it, it
    decides at full capacity on what it has. Why 10 s: a hand-over goes at 10,000 counters
    a second, so a peer holding 100k counters for it finishes within it; it usually ends
    within a round trip."""
    dedup_per_peer: int = 4096
    """Forwarded request ids remembered per peer, so a duplicated datagram never counts twice."""
    cluster_keys: tuple[bytes, ...] = ()
    """Shared keys authenticating cluster datagrams, primary first; any of them is accepted.
    Empty: no authentication (the daemon warns loudly). See ``cluster/wire/auth.py``."""
    max_datagram_age_ns: int = 30_000_000_000
    """Authenticated datagrams older than this are refused as replays. Why 30 s: far above
    any clock skew a healthy cluster has, short enough to bound the anti-replay state."""
    shadow: bool = False
    """Shadow (dry run) for every rule on this node: decisions are computed, counted and
    reported, but every request is allowed. Why off: enforcement is the point."""
    share_decoded: bool = False
    """Hand this node's datagrams to receivers in the same process already decoded, and
    take theirs so (``cluster/wire/handoff.py``): a cache, the very messages decoding the
    bytes would give. For the simulator, which runs every node in one process. Why off: a
    daemon's peers are other processes, where it would only cost."""
    membership: MembershipConfig = field(default_factory=MembershipConfig.lan)
    """SWIM timings (``lan``, ``local``, ``wan`` or ``sim`` presets)."""

    def __post_init__(self) -> None:
        if self.mode not in ("strict", "local"):
            raise ValueError(f"mode must be 'strict' or 'local', not {self.mode!r}")
        if not 0.0 <= self.degraded_fraction <= 1.0:
            raise ValueError("degraded_fraction must be between 0 and 1")
        check_max_clients(self.max_clients)
        if self.replicas < 0:
            raise ValueError("replicas must be >= 0")
        if self.expected_members < 0:
            raise ValueError("expected_members must be >= 0")
        if self.max_pending_per_owner <= 0:
            raise ValueError("max_pending_per_owner must be > 0")
        if self.resync_wait_ns < 0:
            raise ValueError("resync_wait_ns must be >= 0")
        if self.handover_bytes_per_round <= 0:
            raise ValueError("handover_bytes_per_round must be > 0")
        if self.batch_window_ns < 0 or self.forward_timeout_ns <= 0:
            raise ValueError("batch_window_ns must be >= 0 and forward_timeout_ns > 0")

    @classmethod
    def preset(cls, name: str, node_id: str, addr: Address, **overrides: object) -> NodeConfig:
        """``lan`` (default timings), ``local`` (loopback: faster), ``wan`` or ``sim``."""
        presets = {
            "lan": MembershipConfig.lan,
            "local": MembershipConfig.local,
            "wan": MembershipConfig.wan,
            "sim": MembershipConfig.sim,
        }
        if name not in presets:
            raise ValueError(f"preset must be one of {', '.join(presets)}, not {name!r}")
        membership = presets[name]()
        base = cls(node_id=node_id, addr=addr, membership=membership)
        if name == "local":
            base = replace(base, forward_timeout_ns=100 * _MS, gossip_interval_ns=50 * _MS)
        if name == "wan":
            base = replace(base, forward_timeout_ns=1_000 * _MS)
        return replace(base, **overrides)  # type: ignore[arg-type]


def per_round(rate_per_s: int, gossip_interval_ns: int, minimum: int) -> int:
    """A budget given per second, as a gossip round's share of it (at least ``minimum``):
    background work paced per second costs the same CPU and bandwidth whatever the preset's
    gossip interval."""
    return max(minimum, rate_per_s * gossip_interval_ns // 1_000_000_000)


#: ``degraded_start`` hashes the window index modulo 2**32 (mmh3's seed is 32 bits).
_SEED_MASK = 0xFFFF_FFFF


def degraded_units(capacity: int, fraction: float) -> int:
    """What all the nodes deciding a client in degraded mode may admit between them per
    window: ``floor(capacity * fraction)`` (Python's ``int(capacity * fraction)``), 0 when
    the fraction is 0 (fail closed)."""
    return int(capacity * fraction) if fraction > 0 else 0


def degraded_start(client: str, window: int, members: int) -> int:
    """The position whose turn it is to take ``client``'s first spare unit in ``window``:
    ``mmh3.hash(client, seed=window % 2**32, signed=False) % members``. Deterministic, so
    every node computes the same; hashed, so the spare units visit every position."""
    return mmh3.hash(client, window & _SEED_MASK, signed=False) % members


def degraded_share(
    capacity: int, fraction: float, *, members: int, position: int, client: str, window: int
) -> int:
    """What the node at ``position`` (0 to ``members - 1``) may admit for ``client`` in
    ``window`` while deciding in degraded mode.

    The ``units = degraded_units(capacity, fraction)`` are dealt out like cards: every
    position gets ``units // members``, and the ``units % members`` spare units go to the
    positions ``start, start + 1, ...`` (modulo ``members``) from
    ``start = degraded_start(client, window, members)``. Over the positions the shares sum
    to exactly ``units``, so small limits still admit (5 nodes share a capacity of 4 at
    f = 0.5 as 1, 1, 0, 0, 0, a different pair each window) and no window hands out more.
    """
    assert members >= 1 and 0 <= position < members
    units = degraded_units(capacity, fraction)
    base, spare = divmod(units, members)
    if not spare:
        return base
    return base + ((position - degraded_start(client, window, members)) % members < spare)


def local_quota(capacity: int, members: int, fraction: float) -> int:
    """The most one node may admit for a client per window in degraded mode, whatever its
    position: ``ceil(degraded_units(capacity, fraction) / members)``."""
    return -(-degraded_units(capacity, fraction) // max(1, members))
