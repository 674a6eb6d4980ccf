"""SWIM's timing and bounds: the config with its presets, and the formulas derived from it.

Everything here is a value or a pure function of the config and the cluster size ``n``, as
memberlist keeps its presets in config.go and its formulas in util.go. Each formula has
pinned values in the tests. Durations are nanoseconds of the caller's clock (``*_ns``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_MS = 1_000_000
_S = 1_000_000_000

NEVER = 2**63 - 1
"""A deadline that never comes: ``next_deadline`` when nothing is scheduled."""


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timing and bounds of the SWIM protocol. The defaults are the LAN preset."""

    probe_interval_ns: int = 1 * _S
    """Time between two probes. Why 1 s: memberlist's LAN value; cheap and detects in seconds."""
    probe_timeout_ns: int = 500 * _MS
    """Wait for a direct Ack before asking others to probe. Why 500 ms: far above a LAN RTT,
    and it leaves half the interval for the indirect probes."""
    indirect_checks: int = 3
    """Members asked to probe a silent target for us (SWIM's k). Why 3: memberlist's value;
    enough that one bad link does not cause a suspicion."""
    suspicion_mult: int = 2
    """Base suspicion timeout is ``suspicion_mult * max(1, log10(n)) * probe_interval``. Why 2
    (memberlist uses 4): a crash in a small LAN cluster is then declared dead within ~5 s
    (first probe + one interval + 2 s); Lifeguard's max guards against early verdicts."""
    suspicion_max_mult: int = 6
    """Lifeguard: an unconfirmed suspicion waits this many base timeouts. Why 6: memberlist's
    value; a lone, perhaps slow, accuser gives the suspect long enough to refute."""
    suspicion_confirmations: int = 2
    """Lifeguard's K: confirmations from other members that shrink the timeout to the base.
    Why 2: memberlist's ``suspicion_mult - 2`` for its default; capped at ``n - 3``."""
    awareness_max: int = 8
    """Lifeguard's local health: a node that had to refute suspicions of itself waits up to
    this many times longer before it accuses (``awareness.py``). Why 8: memberlist's
    ``AwarenessMaxMultiplier``. 1 turns it off."""
    retransmit_mult: int = 4
    """Each update is sent ``retransmit_mult * ceil(log10(n + 1))`` times. Why 4: memberlist's
    value; reaches every member with high probability."""
    gossip_interval_ns: int = 200 * _MS
    """Pending news is pushed to ``gossip_fanout`` members this often (only when there is
    news). Why 200 ms: memberlist's value; spreads news faster than probe traffic alone."""
    gossip_fanout: int = 3
    """Members each gossip round (and a graceful leave) sends to. Why 3: memberlist's value."""
    max_piggyback: int = 8
    """Most updates attached to one datagram. Why 8: about 400 bytes, under a third of the
    1,400-byte datagram budget, leaving room for the checks it carries."""
    push_pull_interval_ns: int = 30 * _S
    """Full-state exchange (a Join) with a seed we lost or a random member. Why 30 s:
    memberlist's value; heals partitions that outlived the gossip of their news."""
    dead_reap_ns: int = 30 * _S
    """How long dead and left members stay in the table, so stale ALIVE gossip cannot
    resurrect them, before they are reaped and the table stays bounded (a reaped dead member
    still counts toward the cluster's size: ``forget_after_ns``). Why 30 s: memberlist's
    GossipToTheDeadTime; far longer than news takes to die out (retransmit limit x gossip)."""
    forget_after_ns: int = 24 * 3600 * _S
    """How long a dead member still counts toward the cluster's size after it died (the
    majority rule, ``cluster/node/degraded.py``), unless an operator forgets it sooner
    (``meshlimit ctl forget NODE``); also how long a forgotten or departed member's
    tombstone keeps stale news from bringing it back. Why 24 h: far longer than a
    partition is left unattended, so a minority never outlives its memory of the
    majority; a member gone for good costs only majority margin until then (the cluster
    keeps a majority while its live members outnumber its dead ones)."""
    max_members: int = 1024
    """Most members in the table; news of more is dropped and counted. Why 1024: far beyond a
    rate-limiting cluster, small enough that a flood of fake members costs little."""
    max_relays: int = 64
    """Most probes in flight on behalf of other members (PingReq). Why 64: a member gets
    about ``indirect_checks`` requests per interval; 64 survives a burst of them."""
    max_broadcasts: int = 1024
    """Most pending updates; beyond it the most-sent is dropped and counted. Why 1024: one per
    member already fits, since a newer update about a member replaces the older one."""

    def __post_init__(self) -> None:
        assert 0 < self.probe_timeout_ns < self.probe_interval_ns, "timeout must fit the interval"
        assert self.suspicion_mult >= 1 and self.suspicion_max_mult >= 1
        assert self.awareness_max >= 1, "awareness_max must be at least 1"
        assert self.retransmit_mult >= 1 and self.max_piggyback >= 1
        assert self.max_members >= 1 and self.max_relays >= 0 and self.max_broadcasts >= 1
        assert self.forget_after_ns >= self.dead_reap_ns, "forget only what was reaped"

    @classmethod
    def lan(cls) -> MembershipConfig:
        """A data-centre LAN: 1 s probes, a crash declared dead within ~5 s in small clusters."""
        return cls()

    @classmethod
    def local(cls) -> MembershipConfig:
        """Loopback (demo, tests on one machine): memberlist's ``DefaultLocalConfig``
        probing (1 s interval, 200 ms probe timeout, suspicion multiplier 3), with faster
        news and repair than ``lan``. Why not faster probing: every process on a shared
        host waits for a CPU now and then, and a loopback cluster is exactly where its
        nodes and their load share one; a 200 ms interval with a 100 ms timeout and a
        400 ms suspicion turned a loaded host into a flapping cluster (103-219
        membership transitions per 2x-overload run, recovery 4.5 s to never;
        ``docs/performance.md``). A crash is still declared dead within about 5 s."""
        return cls(
            probe_interval_ns=1 * _S,
            probe_timeout_ns=200 * _MS,
            suspicion_mult=3,
            gossip_interval_ns=50 * _MS,
            push_pull_interval_ns=5 * _S,
            dead_reap_ns=10 * _S,
        )

    @classmethod
    def wan(cls) -> MembershipConfig:
        """Across data centres: memberlist's WAN timings, slower and more patient."""
        return cls(
            probe_interval_ns=5 * _S,
            probe_timeout_ns=3 * _S,
            suspicion_mult=6,
            suspicion_confirmations=4,
            gossip_interval_ns=500 * _MS,
            gossip_fanout=4,
            push_pull_interval_ns=60 * _S,
            dead_reap_ns=120 * _S,
        )

    @classmethod
    def sim(cls) -> MembershipConfig:
        """The simulator's preset: the LAN timings, so its findings hold for production."""
        return cls.lan()


# --- formulas ---------------------------------------------------------------------------


def suspicion_timeout_ns(config: MembershipConfig, n_members: int) -> int:
    """The base (minimum) suspicion timeout: ``mult * max(1, log10(n)) * probe_interval``."""
    scale = max(1.0, math.log10(max(1, n_members)))
    return int(config.suspicion_mult * scale * config.probe_interval_ns)


def retransmit_limit(config: MembershipConfig, n_members: int) -> int:
    """How often one update is sent: ``retransmit_mult * ceil(log10(n + 1))``.

    ``ceil(log10(n + 1))`` is the number of decimal digits of ``n`` (n >= 1), computed
    exactly without floats.
    """
    return config.retransmit_mult * len(str(max(1, n_members)))


def expected_confirmations(config: MembershipConfig, n_members: int) -> int:
    """Lifeguard's K for a cluster of ``n``: at most the members other than self, the
    suspect and the first accuser, who could confirm."""
    return max(0, min(config.suspicion_confirmations, n_members - 3))


#: Join retries back off: 1, 2, 4, then every 4 probe intervals. Why a cap of 4: a seed
#: that comes up is joined within 4 probe intervals (4 s on a LAN), while a node whose
#: seeds stay down sends one Join per seed every 4 s rather than every second.
JOIN_RETRY_CAP_PROBES = 4


def backoff_ns(attempt: int, probe_interval_ns: int, cap_probes: int) -> int:
    """The wait after attempt ``attempt`` (from 1): one probe interval, doubling each
    attempt, at most ``cap_probes`` of them (join retries, seed re-resolution)."""
    assert attempt >= 1 and probe_interval_ns > 0 and cap_probes >= 1
    return probe_interval_ns * min(1 << min(attempt - 1, 16), cap_probes)


def join_retry_delay_ns(attempt: int, probe_interval_ns: int) -> int:
    """The wait after join attempt ``attempt`` (from 1) before the next one."""
    return backoff_ns(attempt, probe_interval_ns, JOIN_RETRY_CAP_PROBES)
