"""The bounds the checkers hold a run to: the design's formulas, restated as pure functions.

``docs/design.md`` states what the cluster may admit and how fast it notices failures;
the checkers judge every client window and every crash against these functions. They are
restated here rather than imported from the node, so that a bug planted in the node's own
copy (``cluster/node/config.py``) is judged against the design, not against itself;
``tests/test_checkers.py`` pins each one to the node's copy and to worked values.

- **Degraded shares.** The nodes deciding a client without its owner share
  ``units = floor(capacity * f)`` per window, dealt over the ``members`` of the cluster
  like cards: ``units // members`` each, and the ``units % members`` spare units to the
  positions from ``start = mmh3(client, seed=window) % members`` on (:func:`degraded_share`).
  One node never gets more than ``ceil(units / members)`` (:func:`max_share`).
- **Detection.** A member that stops answering is declared dead by every member within
  :func:`detection_bound_ns`: a probe round and a half, the probe that fails, and the
  longest (unconfirmed) Lifeguard suspicion.
- **Delays.** A datagram arrives within :func:`delay_bound_ns` of being sent on a link
  configured so (latency, capped jitter, reordering; no bound with a bandwidth limit).

Durations are nanoseconds; nothing here reads a clock or draws a random number.
"""

from __future__ import annotations

import mmh3

from meshlimit.cluster.membership import MembershipConfig, suspicion_timeout_ns

from .network import LinkConfig

#: ``degraded_start`` hashes the window index modulo 2**32 (mmh3's seed is 32 bits).
_SEED_MASK = 0xFFFF_FFFF
#: No bound: a delay that may be arbitrarily long (a bandwidth-limited link queues).
UNBOUNDED = 2**62
#: Slack on every timer-driven bound: a monotonic clock may drift by up to 1,000 ppm in
#: the simulator's scenarios, and a tick runs up to a millisecond late.
TIMER_SLACK_PPM = 1_000
TICK_SLACK_NS = 1_000_000


def degraded_units(capacity: int, fraction: float) -> int:
    """What every node cut off from a client's owner may admit between them per window:
    ``floor(capacity * f)``, 0 when ``f`` is 0 (fail closed)."""
    return int(capacity * fraction) if fraction > 0 else 0


def degraded_share(
    capacity: int, fraction: float, *, members: int, position: int, client: str, window: int
) -> int:
    """The share of the node at ``position`` of ``members`` for ``client`` in ``window``:
    ``units // members``, plus one spare unit for the ``units % members`` positions from
    ``mmh3(client, seed=window mod 2**32) % members`` on (cyclically). Over all positions
    the shares sum to exactly ``units``."""
    assert members >= 1 and 0 <= position < members
    units = degraded_units(capacity, fraction)
    base, spare = divmod(units, members)
    if not spare:
        return base
    start = mmh3.hash(client, window & _SEED_MASK, signed=False) % members
    return base + ((position - start) % members < spare)


def max_share(capacity: int, fraction: float, members: int) -> int:
    """The most one node may admit per window in degraded mode, whatever its position:
    ``ceil(units / members)`` (``units`` itself for a node that knows only itself)."""
    return -(-degraded_units(capacity, fraction) // max(1, members))


def detection_bound_ns(config: MembershipConfig, members: int) -> int:
    """The longest a member that stopped answering can stay undeclared by a live observer
    that keeps running, in a cluster of ``members``:
    ``(2 (n - 1) + 1) x probe_interval + suspicion_max_mult x suspicion_timeout(n)``.

    The shuffled round-robin probes every other member once a round, so the silent one is
    probed within two rounds, ``2 (n - 1)`` intervals; that probe fails at the next
    interval, when the member becomes suspect; the suspicion runs out within its longest,
    unconfirmed timeout (Lifeguard), and the member is dead. Confirmations from other
    members, and news of their verdicts, only make it sooner. Timer slack on top
    (:data:`TIMER_SLACK_PPM`, :data:`TICK_SLACK_NS`)."""
    n = max(2, members)
    rounds_ns = (2 * (n - 1) + 1) * config.probe_interval_ns
    suspicion_ns = config.suspicion_max_mult * suspicion_timeout_ns(config, n)
    return with_timer_slack(rounds_ns + suspicion_ns)


def with_timer_slack(duration_ns: int) -> int:
    """``duration_ns`` as a node's drifting timers may stretch it, plus a late tick."""
    return duration_ns + duration_ns * TIMER_SLACK_PPM // 1_000_000 + TICK_SLACK_NS


def delay_bound_ns(link: LinkConfig) -> int:
    """The longest one datagram can take on ``link``: latency, the jitter's cap (lognormal:
    ``jitter_cap_factor x jitter``; uniform: ``jitter``), and the reordering delay if
    datagrams are reordered. :data:`UNBOUNDED` with a bandwidth limit (datagrams queue)."""
    if link.bandwidth_bytes_per_s:
        return UNBOUNDED
    if link.jitter_dist == "lognormal":
        jitter = link.jitter_ns * link.jitter_cap_factor
    else:
        jitter = link.jitter_ns
    reorder = link.reorder_ns if link.reorder > 0 else 0
    return link.latency_ns + jitter + reorder
