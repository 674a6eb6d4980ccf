"""The mutation check's catalogue: the mutants themselves.

Each :class:`Mutant` is one small, realistic bug, planted for one run either through
the simulator's ``plant=`` hook or as a monkeypatch restored afterwards; the runner is
``scripts/mutants.py``. Every mutant names the shipped scenarios (``sim/scenarios``) most
likely to expose it: each bug must be caught by what ships -- the scenarios and the default
fuzz -- not by a scenario of the check's own. The mutants added with the sliding, carry,
news, reset and misdelivery verdicts are in :mod:`mutation.more`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from meshlimit.cluster.node import Node
from meshlimit.cluster.wire.messages import MemberState

#: Base seed of the mutants' fuzz runs (``fuzz_seed(MUTANT_FUZZ_BASE, i)``).
MUTANT_FUZZ_BASE = 7
#: Short fuzz runs tried per mutant after its scenarios (each ~0.1-0.5 wall seconds).
DEFAULT_FUZZ_RUNS = 12

Plant = Callable[[Node], None]
_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
#: ``(object, attribute, replacement)``: set for one run, restored afterwards.
Patch = tuple[Any, str, Any]


@dataclass(frozen=True)
class Mutant:
    """One planted bug: what it breaks and how it is applied."""

    name: str
    area: str
    description: str
    scenarios: tuple[str, ...]
    """Shipped scenarios (by name) most likely to expose it, tried first."""
    plant: Plant | None = None
    patches: Callable[[], list[Patch]] | None = None
    """Module-level patches, built in the worker (so the originals are the worker's)."""


# --- helpers for planting ----------------------------------------------------------------


def _wrap(obj: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace the bound method ``obj.name`` by ``make(original)`` on this instance only."""
    setattr(obj, name, make(getattr(obj, name)))


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


@contextmanager
def _patched(patches: list[Patch]) -> Iterator[None]:
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


# --- forwarding --------------------------------------------------------------------------


def _plant_decide_without_owner(node: Node) -> None:
    """The forwarder decides on its own counts at full capacity instead of forwarding."""

    def forward(client: str, cost: int, owner: str, now_ns: int) -> Any:
        wall = now_ns + node._wall_offset
        return node._decide_here(client, cost, wall, "owner")

    node.forwarding.forward = forward  # type: ignore[method-assign]


def _plant_refusal_read_as_admission(node: Node) -> None:
    """The forwarder takes the owner's refusals for admissions."""

    def make(resolve: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(sender: str, message: Any, *args: Any) -> Any:
            return [
                replace(event, decision=event.decision._replace(allowed=True))
                for event in resolve(sender, message, *args)
            ]

        return wrapped

    _wrap(node.forwarding, "resolve", make)


def _plant_timeout_keeps_pending(node: Node) -> None:
    """A timed-out forward is answered degraded but stays pending: a late reply answers it
    a second time."""
    forwarding = node.forwarding

    def make(expire: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(now_ns: int) -> Any:
            expired = expire(now_ns)
            for ticket, pending in expired:
                forwarding.pending[ticket] = replace(pending, deadline_ns=now_ns + 10**15)
            return expired

        return wrapped

    _wrap(forwarding, "expire", make)


def _plant_dedup_off(node: Node) -> None:
    """The owner forgets which request ids it answered: a duplicated check is decided (and
    counted) again."""
    node.forwarding._answers_of = lambda sender, life: OrderedDict()  # type: ignore[method-assign]


def _plant_stale_reply_used(node: Node) -> None:
    """A reply from a node that is not the check's owner resolves it (no sender check)."""
    forwarding = node.forwarding

    def make(resolve: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(sender: str, message: Any, *args: Any) -> Any:
            for result in message.results:
                pending = forwarding.pending.get(result.request_id)
                if pending is not None and pending.owner != sender:
                    forwarding.pending[result.request_id] = replace(pending, owner=sender)
            return resolve(sender, message, *args)

        return wrapped

    _wrap(forwarding, "resolve", make)


# --- replication and hand-over ----------------------------------------------------------


def _plant_no_replication(node: Node) -> None:
    """Counters are never gossiped to the replicas (an owner's crash loses its counts)."""
    node.replication.gossip = _noop  # type: ignore[method-assign]


def _plant_merge_dropped(node: Node) -> None:
    """Received counter deltas are dropped (replicas and degraded reports never merge)."""
    node.replication.merge = _noop  # type: ignore[method-assign]


def _plant_no_handover(node: Node) -> None:
    """A ring change hands nothing over: a new owner starts its clients from zero."""
    node.replication.queue_handover = _noop  # type: ignore[method-assign]
    node.replication.continue_handover = _noop  # type: ignore[method-assign]


def _plant_leave_without_handover(node: Node) -> None:
    """A graceful leave hands nothing to the successors."""
    node.replication.hand_over_everything = _noop  # type: ignore[method-assign]
    node.replication.queue_handover = _noop  # type: ignore[method-assign]


# --- window arithmetic and burst carry ---------------------------------------------------


def _patch_window_off_by_one() -> list[Patch]:
    """Fixed window admits one more than its limit (``cost <= room`` became ``<= room+1``)."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import fixed_window as original

    def fixed_window(idx: int, cur: int, prev: int, carry: int, limit: int, *rest: Any) -> Any:
        return original(idx, cur, prev, carry, limit + 1, *rest)

    return [(counters, "fixed_window", fixed_window)]


def _patch_sliding_ignores_previous() -> list[Patch]:
    """The sliding window forgets the previous window's weight."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import sliding_window as original

    def sliding_window(idx: int, cur: int, prev: int, *rest: Any) -> Any:
        return original(idx, cur, 0, *rest)

    return [(counters, "sliding_window", sliding_window)]


def _patch_token_bucket_double_burst() -> list[Patch]:
    """The token bucket counts the burst twice."""
    from meshlimit.core import counters
    from meshlimit.core.algorithms import token_bucket as original

    def token_bucket(tat: int, limit: int, burst: int, *rest: Any) -> Any:
        return original(tat, limit, burst * 2 + 1, *rest)

    return [(counters, "token_bucket", token_bucket)]


def _patch_roll_forgets_current() -> list[Patch]:
    """Rolling one window forward drops the window just ended (``prev`` reads 0)."""
    from meshlimit.core import algorithms

    original = algorithms.roll_window

    def roll_window(*args: Any) -> tuple[int, int, int]:
        cur, prev, carry = original(*args)
        return cur, 0, carry

    return [(algorithms, "roll_window", roll_window)]


def _patch_carry_forgiven() -> list[Patch]:
    """Burst over-use is never carried: each window starts with the full burst again."""
    from meshlimit.core import algorithms

    original = algorithms.roll_window

    def roll_window(*args: Any) -> tuple[int, int, int]:
        cur, prev, _carry = original(*args)
        return cur, prev, 0

    return [(algorithms, "roll_window", roll_window)]


# --- membership --------------------------------------------------------------------------


def _patch_suspicion_instant() -> list[Patch]:
    """The suspicion timeout is zero: one missed probe declares a healthy member dead."""
    from meshlimit.cluster.membership import members

    return [(members, "suspicion_timeout_ns", lambda config, n: 0)]


def _plant_suspicion_never_expires(node: Node) -> None:
    """Suspects are never declared dead (a crashed owner stays suspect forever)."""
    node.membership._table.expire_suspicions = _noop  # type: ignore[method-assign]


def _plant_no_refutation(node: Node) -> None:
    """A member never refutes a suspicion of itself (no higher incarnation)."""
    node.membership._table._about_self = _noop  # type: ignore[method-assign]


def _plant_incarnation_ignored(node: Node) -> None:
    """News about a member is ordered by state alone, not incarnation: once dead, a member
    never comes back alive (a restart is never noticed)."""
    table = node.membership._table

    def make(apply: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(u: Any, sender: str, now: int) -> None:
            m = table.members.get(u.node)
            if m is not None and u.node != table.node_id and u.state < m.state:
                return
            apply(u, sender, now)

        return wrapped

    _wrap(table, "apply", make)


# --- rules, resets, clocks ---------------------------------------------------------------


def _patch_rules_arrival_order() -> list[Patch]:
    """Rule entries: the last to arrive wins, not the newest HLC stamp."""
    from meshlimit.core import registry

    return [(registry, "_newer", lambda value, stamp, current: stamp != current.stamp)]


def _plant_reset_ignored(node: Node) -> None:
    """An operator reset changes the rule table but never clears the counts."""
    node.rules._on_reset = _noop


def _patch_reset_resurrects() -> list[Patch]:
    """Slots from before a reset are merged again (stale counts undo the reset)."""
    from meshlimit.cluster.node import replication

    return [(replication, "_after_reset", lambda slot, window_ns, reset_ms: True)]


def _plant_clock_offset_doubled(node: Node) -> None:
    """The node applies its wall-clock offset twice (a sign/units slip in ``_advance``)."""
    advance = node._advance

    def wrapped(now_ns: int, wall_ns: int | None) -> int:
        if wall_ns is not None:
            wall_ns = 2 * wall_ns - now_ns
        return advance(now_ns, wall_ns)

    node._advance = wrapped  # type: ignore[method-assign]


# --- degraded quota and the majority rule ------------------------------------------------


def _patch_degraded_full_capacity() -> list[Patch]:
    """A degraded node may admit the whole capacity, not its share."""
    from meshlimit.cluster.node import degraded

    return [(degraded, "degraded_share", lambda capacity, fraction, **_: capacity)]


def _patch_degraded_not_divided() -> list[Patch]:
    """The degraded units are not dealt over the members: each node takes them all."""
    from meshlimit.cluster.node import degraded
    from meshlimit.cluster.node.config import degraded_share as original

    def share(capacity: int, fraction: float, **kwargs: Any) -> int:
        return int(original(capacity, fraction, **{**kwargs, "members": 1, "position": 0}))

    return [(degraded, "degraded_share", share)]


def _plant_degraded_not_reported(node: Node) -> None:
    """Degraded admissions are never reported to the owner."""
    node.degraded.note_admitted = _noop  # type: ignore[method-assign]


def _plant_majority_always(node: Node) -> None:
    """The majority rule is gone: a node in a minority decides at full capacity."""
    degraded = node.degraded

    def make(observe: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(membership: Any, states: Any, *, joined: bool) -> None:
            observe(membership, states, joined=joined)
            degraded.majority = joined

        return wrapped

    _wrap(degraded, "observe", make)


def _plant_majority_half(node: Node) -> None:
    """Half counts as a majority (``>=`` for ``>``): both sides of an even split decide."""
    degraded = node.degraded

    def make(observe: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(membership: Any, states: dict[str, int], *, joined: bool) -> None:
            observe(membership, states, joined=joined)
            quorum = membership.quorum()
            live = sum(1 for n in quorum if states.get(n) in _LIVE)
            expected = node.config.expected_members
            degraded.majority = joined and 2 * live >= max(len(quorum), expected)

        return wrapped

    _wrap(degraded, "observe", make)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("decide_without_owner", "forwarding",
           "a forwarder decides on its own counts instead of forwarding to the owner",
           ("healthy", "hot_client"), plant=_plant_decide_without_owner),
    Mutant("refusal_read_as_admission", "forwarding",
           "the forwarder takes the owner's refusals for admissions",
           ("hot_client", "healthy"), plant=_plant_refusal_read_as_admission),
    Mutant("timeout_keeps_pending", "forwarding",
           "a timed-out forward stays pending, so a late reply answers it twice",
           ("loss_20pct", "flapping_link", "owner_crash"), plant=_plant_timeout_keeps_pending),
    Mutant("foreign_reply_used", "forwarding",
           "a reply from a node that is not the owner resolves the check",
           ("misdelivery", "rolling_restart", "join_leave"), plant=_plant_stale_reply_used),
    Mutant("dedup_off", "de-duplication",
           "the owner decides a duplicated check again instead of replaying its answer",
           ("duplication_reordering", "loss_20pct"), plant=_plant_dedup_off),
    Mutant("no_replication", "replication",
           "counters are never gossiped to the replicas",
           ("owner_crash", "rolling_restart"), plant=_plant_no_replication),
    Mutant("merge_dropped", "replication",
           "received counter deltas are dropped",
           ("owner_crash", "minority_partition"), plant=_plant_merge_dropped),
    Mutant("no_handover", "hand-over",
           "a ring change hands no counts to the new holders",
           ("join_under_load", "join_leave"), plant=_plant_no_handover),
    Mutant("leave_without_handover", "hand-over",
           "a graceful leave hands nothing to the successors",
           ("join_under_load", "join_leave"), plant=_plant_leave_without_handover),
    Mutant("window_off_by_one", "window arithmetic",
           "the fixed window admits limit + 1",
           ("healthy", "hot_client"), patches=_patch_window_off_by_one),
    Mutant("sliding_ignores_previous", "window arithmetic",
           "the sliding window forgets the previous window's weight",
           ("healthy", "hot_client"), patches=_patch_sliding_ignores_previous),
    Mutant("token_bucket_double_burst", "burst carry",
           "the token bucket counts its burst twice",
           ("token_bucket_hot",), patches=_patch_token_bucket_double_burst),
    Mutant("roll_forgets_current", "window arithmetic",
           "rolling forward one window drops the window just ended",
           ("healthy", "hot_client"), patches=_patch_roll_forgets_current),
    Mutant("carry_forgiven", "burst carry",
           "burst over-use is never carried into the next window",
           ("healthy", "hot_client"), patches=_patch_carry_forgiven),
    Mutant("suspicion_instant", "membership: suspicion",
           "a zero suspicion timeout: one lost probe declares a healthy member dead",
           ("owner_crash", "lossy_then_clean", "loss_20pct"),
           patches=_patch_suspicion_instant),
    Mutant("suspicion_never_expires", "membership: dead",
           "suspects are never declared dead",
           ("owner_crash", "rolling_restart"), plant=_plant_suspicion_never_expires),
    Mutant("no_refutation", "membership: incarnations",
           "a member never refutes a suspicion of itself",
           ("lossy_then_clean", "rolling_restart"), plant=_plant_no_refutation),
    Mutant("incarnation_ignored", "membership: incarnations",
           "news is ordered by state alone, so a dead member never comes back",
           ("restart_before_reap", "rolling_restart", "lossy_then_clean"),
           plant=_plant_incarnation_ignored),
    Mutant("rules_arrival_order", "rule ordering",
           "the last rule entry to arrive wins, not the newest HLC stamp",
           ("concurrent_rule_writes", "rule_change_storm"), patches=_patch_rules_arrival_order),
    Mutant("reset_ignored", "resets",
           "an operator reset never clears the counts",
           ("operator_reset", "reset_during_partition"), plant=_plant_reset_ignored),
    Mutant("reset_resurrects", "resets",
           "slots from before a reset are merged again",
           ("reset_during_partition", "operator_reset"), patches=_patch_reset_resurrects),
    Mutant("clock_offset_doubled", "clock offsets",
           "a node applies its wall-clock offset twice",
           ("clock_skew",), plant=_plant_clock_offset_doubled),
    Mutant("degraded_full_capacity", "degraded quota",
           "a degraded node may admit the whole capacity",
           ("minority_partition", "owner_crash"), patches=_patch_degraded_full_capacity),
    Mutant("degraded_not_divided", "degraded quota",
           "the degraded units are not dealt over the members",
           ("minority_partition", "edge_small_limit_degraded"),
           patches=_patch_degraded_not_divided),
    Mutant("degraded_not_reported", "degraded quota",
           "degraded admissions are never reported to the owner",
           ("owner_crash", "minority_partition"), plant=_plant_degraded_not_reported),
    Mutant("majority_always", "majority rule",
           "a node in a minority decides at full capacity",
           ("minority_partition", "edge_minority_owner"), plant=_plant_majority_always),
    Mutant("majority_half", "majority rule",
           "half the quorum counts as a majority",
           ("even_split",), plant=_plant_majority_half),
)  # fmt: skip
