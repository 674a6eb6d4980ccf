"""A node's metrics, read from its counters when they are asked for.

Theory of operation. The node and its membership layer already count what they
do in plain ``Counter`` objects (``node.stats``, ``node.dropped``,
``membership.stats``, ``membership.dropped``, the counter table's ``dropped``
and ``expired``). :func:`node_families` reads them, and a few sizes, into
metric families at the moment they are asked for: the HTTP front-end calls it
from a ``prometheus_client`` collector on every scrape of ``/metrics``
(``http_api.py``), so the hot path pays nothing for metrics.

The one measurement the counters cannot give is how long a forwarded check
waited. :class:`LatencyHistogram` keeps fixed buckets for it; the runtime feeds
it through its ``on_forwarded(elapsed_ns, path)`` hook when it has one.

:class:`DegradedReporter` makes degraded mode visible in the logs: each
:meth:`~DegradedReporter.step` (the daemon calls it every 10 s) compares the
degraded-decision counters with the last step's and logs one INFO line if any
decision was degraded.

Sans-IO like the node: no clock, no event loop, no third-party import; the
caller says when.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshlimit.cluster.wire.messages import MemberState

if TYPE_CHECKING:
    from meshlimit.cluster.node import Node

log = logging.getLogger("meshlimit.metrics")

#: Decision paths, as in ``Decision.path`` and the ``{path}_{result}`` keys of ``node.stats``.
PATHS = ("owner", "forwarded", "local", "degraded")
RESULTS = ("allowed", "refused")
#: ``node.stats`` keys with a family of their own, by family name (a counter) and help.
#: The other keys go to ``meshlimit_node_events_total{event}``.
STAT_FAMILIES = {
    "shadow_refused": (
        "meshlimit_shadow_refused",
        "Checks a shadow (dry-run) rule would have refused; they were allowed.",
    ),
    "batches_sent": ("meshlimit_forward_batches", "Batches of forwarded checks sent to owners."),
    "batched_checks": (
        "meshlimit_forward_batched_checks",
        "Checks sent in those batches (divided by the batches: the mean batch size).",
    ),
    "forward_timeouts": (
        "meshlimit_forward_timeouts",
        "Forwarded checks the owner did not answer in time (then sent once more if the "
        "owner was answering others promptly, else decided overloaded or degraded).",
    ),
    "forward_retries": (
        "meshlimit_forward_retries",
        "Forwarded checks sent a second time: they timed out while their owner answered "
        "others promptly (lost on the way); the owner de-duplicates, so none counts twice.",
    ),
    "checks_waited": (
        "meshlimit_checks_waited",
        "Checks that waited for room because max_inflight forwarded checks were in flight.",
    ),
    "late_replies": (
        "meshlimit_forward_late_replies",
        "Owner answers that came after their check had timed out.",
    ),
    "duplicate_checks": (
        "meshlimit_forward_duplicate_checks",
        "Forwarded checks received twice and answered from the de-duplication cache.",
    ),
    "datagrams_sent": ("meshlimit_datagrams_sent", "UDP datagrams sent."),
}
#: Why a check was answered ``overloaded`` (``Node.overloaded``), as ``overloaded_REASON``.
OVERLOAD_REASONS = (
    "owner_backlog",
    "slow_owner",
    "stalled_owner",
    "waiting_full",
    "waited_too_long",
)
_OWN_FAMILY = frozenset(
    {f"{p}_{r}" for p in PATHS for r in RESULTS}
    | set(STAT_FAMILIES)
    | {"overloaded"}
    | {f"overloaded_{reason}" for reason in OVERLOAD_REASONS}
)
#: Forward latency buckets, in seconds. Why these: a loopback round trip is ~0.1 ms, a
#: LAN one below 1 ms plus the 0.3 ms batch window; the top ones catch the forward
#: timeout (200 ms on a LAN, 1 s on a WAN).
FORWARD_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Most distinct ``path`` labels the latency histogram keeps (the runtime sends two).
MAX_LATENCY_PATHS = 4
#: Why 10 s: often enough to follow a failure as it happens, rarely enough that a long
#: partition costs a few lines a minute.
DEGRADED_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Histogram:
    """One histogram series: cumulative ``(upper bound, count)`` buckets ending with
    ``("+Inf", total)``, and the sum of the observations."""

    buckets: tuple[tuple[str, int], ...]
    sum: float


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: a name (counters without ``_total``), its kind
    (``counter``, ``gauge`` or ``histogram``), help text, label names and samples
    as ``(label values, value)``."""

    name: str
    kind: str
    doc: str
    labels: tuple[str, ...] = ()
    samples: tuple[tuple[tuple[str, ...], float | Histogram], ...] = ()


class LatencyHistogram:
    """Bucket counts of forwarded-check latencies by decision path; O(log buckets) per
    observation. The runtime calls :meth:`observe`; :meth:`family` reads it."""

    __slots__ = ("bounds_ns", "counts", "sums_ns")

    def __init__(self, buckets_s: tuple[float, ...] = FORWARD_BUCKETS_S) -> None:
        assert buckets_s and list(buckets_s) == sorted(buckets_s), "buckets must be sorted"
        self.bounds_ns = [round(b * 1e9) for b in buckets_s]
        self.counts: dict[str, list[int]] = {}
        """Per path: one count per bucket (not cumulative), then the overflow past the last."""
        self.sums_ns: dict[str, int] = {}

    def observe(self, elapsed_ns: int, path: str) -> None:
        """Count one forwarded check that took ``elapsed_ns`` and ended on ``path``
        (``forwarded``, or ``degraded`` when the owner did not answer in time)."""
        counts = self.counts.get(path)
        if counts is None:
            if len(self.counts) >= MAX_LATENCY_PATHS:
                return  # a bounded label set: an unexpected path is not worth a series
            counts = self.counts[path] = [0] * (len(self.bounds_ns) + 1)
            self.sums_ns[path] = 0
        counts[bisect_left(self.bounds_ns, elapsed_ns)] += 1
        self.sums_ns[path] += elapsed_ns

    def family(self) -> Family:
        """``meshlimit_forward_latency_seconds{path}``."""
        samples = []
        for path, counts in sorted(self.counts.items()):
            cumulative, buckets = 0, []
            for bound_ns, count in zip(self.bounds_ns, counts, strict=False):
                cumulative += count
                buckets.append((repr(bound_ns / 1e9), cumulative))
            buckets.append(("+Inf", cumulative + counts[-1]))
            samples.append(((path,), Histogram(tuple(buckets), self.sums_ns[path] / 1e9)))
        return Family(
            "meshlimit_forward_latency_seconds",
            "histogram",
            "Time from forwarding a check to its decision, by the path that decided it "
            "(forwarded: the owner answered; degraded: it did not in time).",
            ("path",),
            tuple(samples),
        )


def node_families(
    node: Node,
    *,
    reloads: Mapping[str, int] | None = None,
    forward_latency: LatencyHistogram | None = None,
) -> list[Family]:
    """Every metric family of ``node``, computed now from its counters."""
    families = [*_checks(node), *_membership(node), *_state(node), *_drops_and_events(node)]
    counts = reloads or {}
    families.append(
        Family(
            "meshlimit_config_reloads",
            "counter",
            "Config file reloads by result.",
            ("result",),
            tuple(((result,), counts.get(result, 0)) for result in ("ok", "error")),
        )
    )
    if forward_latency is not None:
        families.append(forward_latency.family())
    return families


def _one(name: str, kind: str, doc: str, value: float) -> Family:
    return Family(name, kind, doc, (), (((), value),))


def _checks(node: Node) -> list[Family]:
    stats = node.stats
    checks = Family(
        "meshlimit_checks",
        "counter",
        "Checks decided on this node by path and result. path=forwarded counts both the "
        "checks this node forwarded and got answered and those it decided as owner for a "
        "peer; path=degraded are the degraded decisions (owner unreachable, or minority); "
        "path=overloaded the checks refused because the cluster was too busy to decide "
        "them in time (backpressure; see meshlimit_overloaded_total).",
        ("path", "result"),
        (
            *(((p, r), stats.get(f"{p}_{r}", 0)) for p in PATHS for r in RESULTS),
            (("overloaded", "refused"), stats.get("overloaded", 0)),
        ),
    )
    overloaded = Family(
        "meshlimit_overloaded",
        "counter",
        "Checks answered overloaded, by reason: owner_backlog (too many checks awaiting "
        "the owner), slow_owner (timed out while the owner answered slowly), stalled_owner "
        "(timed out while the owner, answering until then, went silent briefly), waiting_full "
        "(too many checks waiting for room), waited_too_long (waited for room longer than "
        "the longest forward timeout).",
        ("reason",),
        tuple(((r,), stats.get(f"overloaded_{r}", 0)) for r in OVERLOAD_REASONS),
    )
    singles = [
        _one(name, "counter", doc, stats.get(key, 0)) for key, (name, doc) in STAT_FAMILIES.items()
    ]
    pending = _one(
        "meshlimit_forward_pending",
        "gauge",
        "Forwarded checks awaiting their owner's answer.",
        node.pending_count(),
    )
    return [checks, overloaded, *singles, pending]


def _membership(node: Node) -> list[Family]:
    membership = node.membership
    by_state = dict.fromkeys(MemberState.NAMES.values(), 0)
    for m in membership.members():
        name = MemberState.NAMES.get(m.state, "unknown")
        by_state[name] = by_state.get(name, 0) + 1
    offsets = sorted(membership.clock_offsets().items())
    rtts = sorted(membership.rtts().items())
    return [
        Family(
            "meshlimit_members",
            "gauge",
            "Members in this node's view, by state.",
            ("state",),
            tuple(((state,), count) for state, count in by_state.items()),
        ),
        Family(
            "meshlimit_clock_offset_seconds",
            "gauge",
            "Smoothed estimate of each peer's wall clock minus this node's.",
            ("peer",),
            tuple(((peer,), ns / 1e9) for peer, ns in offsets),
        ),
        Family(
            "meshlimit_rtt_seconds",
            "gauge",
            "Smoothed round trip of direct probes to each peer.",
            ("peer",),
            tuple(((peer,), ns / 1e9) for peer, ns in rtts),
        ),
    ]


def _state(node: Node) -> list[Family]:
    counters = node.counters
    return [
        Family(
            "meshlimit_node_info",
            "gauge",
            "This node's id and mode (the value is always 1).",
            ("node", "mode"),
            (((node.node_id, node.config.mode), 1),),
        ),
        _one(
            "meshlimit_client_counters",
            "gauge",
            "(client, series) counters held in the counter table.",
            len(counters),
        ),
        _one(
            "meshlimit_client_counters_max",
            "gauge",
            "Most counters the table holds; new clients beyond it are refused.",
            counters.max_clients,
        ),
        _one(
            "meshlimit_client_counters_expired",
            "counter",
            "Counters swept from the table once their windows were over.",
            counters.expired,
        ),
        _one(
            "meshlimit_client_counters_refused",
            "counter",
            "New counters refused because the table was full.",
            counters.dropped,
        ),
        *_registry(node),
    ]


#: Why registry entries leave, as counted in ``RuleRegistry.stats``, with help text.
COLLECTED = {
    "calls_expired": "per-call rule expired: no call for its lifetime",
    "calls_evicted": "per-call rule evicted at the bound, the one closest to expiry",
    "calls_refused_expired": "per-call rule arrived already expired: not stored",
    "graves_purged": "removal or reset purged a day (the horizon) after its stamp",
    "graves_refused_old": "removal or reset arrived older than the horizon: not stored",
}


def _registry(node: Node) -> list[Family]:
    registry = node.registry
    return [
        _one(
            "meshlimit_rule_entries",
            "gauge",
            "Durable rule registry entries: default, tiers, client overrides, removals and resets.",
            registry.entry_count(),
        ),
        _one(
            "meshlimit_rule_graves",
            "gauge",
            "Removals and resets among them, held until their purge.",
            registry.grave_count(),
        ),
        _one(
            "meshlimit_rule_call_entries",
            "gauge",
            "Per-call rule entries (CL.THROTTLE keys): soft state that expires.",
            registry.call_count(),
        ),
        _one(
            "meshlimit_rule_call_entries_max",
            "gauge",
            "Most per-call entries kept; beyond, the one closest to expiry is evicted.",
            registry.max_calls,
        ),
        Family(
            "meshlimit_rule_entries_collected",
            "counter",
            "Rule registry entries that left or were not stored, by reason: "
            + "; ".join(f"{reason}: {doc}" for reason, doc in COLLECTED.items())
            + ".",
            ("reason",),
            tuple(((reason,), registry.stats.get(reason, 0)) for reason in COLLECTED),
        ),
    ]


def _drops_and_events(node: Node) -> list[Family]:
    layers = (("node", node.dropped), ("membership", node.membership.dropped))
    return [
        Family(
            "meshlimit_dropped",
            "counter",
            "Inputs and overflows dropped, by layer (node, membership) and reason.",
            ("layer", "reason"),
            tuple(((layer, r), n) for layer, counts in layers for r, n in sorted(counts.items())),
        ),
        Family(
            "meshlimit_node_events",
            "counter",
            "Other node activity (rules applied, anti-entropy repairs, ring changes...).",
            ("event",),
            tuple(((e,), n) for e, n in sorted(node.stats.items()) if e not in _OWN_FAMILY),
        ),
        Family(
            "meshlimit_swim_events",
            "counter",
            "Membership protocol activity (probes, suspicions, refutations...).",
            ("event",),
            tuple(((e,), n) for e, n in sorted(node.membership.stats.items())),
        ),
    ]


class DegradedReporter:
    """One INFO line per interval in which degraded decisions were made."""

    KEYS = ("degraded_allowed", "degraded_refused", "forward_timeouts")

    def __init__(self, node: Node, *, interval_s: float = DEGRADED_LOG_INTERVAL_S) -> None:
        self.node = node
        self.interval_s = interval_s
        """How often the driver calls :meth:`step`, shown on the log line."""
        self._last = {key: node.stats.get(key, 0) for key in self.KEYS}

    def step(self) -> dict[str, int] | None:
        """Compare with the last step; log and return the deltas if any decision was
        degraded since, else None."""
        now = {key: self.node.stats.get(key, 0) for key in self.KEYS}
        delta = {key: now[key] - self._last[key] for key in self.KEYS}
        self._last = now
        if delta["degraded_allowed"] + delta["degraded_refused"] == 0:
            return None
        down = sorted(
            m.node
            for m in self.node.membership.members()
            if m.state in (MemberState.SUSPECT, MemberState.DEAD)
        )
        log.info(
            "degraded decisions",
            extra={
                "interval_s": self.interval_s,
                "allowed": delta["degraded_allowed"],
                "refused": delta["degraded_refused"],
                "forward_timeouts": delta["forward_timeouts"],
                "members_down": ",".join(down) or "-",
            },
        )
        return delta
