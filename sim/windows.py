"""Client windows: every admission tallied by deciding life, and the bound each window is held to.

Theory of operation. Every admission a node reports is tallied under the window it was
decided in (client, series, index by the decider's own wall clock, as the cluster merges
counts by index) and under the *life* that decided it, with its instant in true time and
whether it was decided at full capacity (``owner``, ``forwarded``, ``local``: on the merged
counts) or in degraded mode (against a share). :func:`judge` then derives the window's
bound from what its deciders could know, term by term (``docs/simulator.md`` names each
with its formula):

- ``capacity`` (limit + burst; a token bucket also refills ``limit`` within the window)
  for the full-capacity deciders together, when one life decided them all, or when every
  later decider provably held the earlier ones' counts (:data:`EXACT`);
- plus what a full decider could not have known: for each life ``B`` and every other full
  life ``A``, ``A``'s admissions from the instant ``known(A, B)`` on (from a hand-over or
  a gossip round that must have reached ``B``: :data:`HANDOVER`, :data:`GOSSIP_LAG`), or
  all of them when nothing proves ``B`` heard (:data:`PER_NODE`); the least over ``B``;
- plus each degraded-only life's share (:data:`DEGRADED`; alone, :data:`DEGRADED_ONLY`,
  which is below the capacity);
- plus one capacity (or share) per life whose wall clock stepped back into the window
  (:data:`CLOCK_STEPPED_BACK`: it may charge to a newer window than its clock names);
- times one more for each operator reset of the client that reached nodes during the
  window (:data:`RESET`: counting restarts from zero there, by design).

Each deciding life is also held alone: a full-capacity life to the capacity (its own view
always includes its own admissions), a degraded one to its share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: A life: ``(node, number)``; see :class:`~meshlimit.sim.history.Life`.
LifeKey = tuple[str, int]
#: A client window: ``(client, series, index)``.
WindowKey = tuple[str, str, int]
#: ``known(a, b, client, until)``: the instant before which every admission of life ``a``
#: was in life ``b``'s counts by ``until``; ``NOTHING_KNOWN`` when nothing proves it.
Knowledge = Callable[[LifeKey, LifeKey, str, int], int]
NOTHING_KNOWN = -(2**62)

# The bounds a window may be judged at, tightest first (``docs/simulator.md``).
DEGRADED_ONLY = "degraded_only"
EXACT = "exact"
DEGRADED = "degraded"
HANDOVER = "handover"
RESYNC = "resync"
GOSSIP_LAG = "gossip_lag"
PER_NODE = "per_node"
CLOCK_STEPPED_BACK = "clock_stepped_back"
RESET = "reset"
BOUNDS = (DEGRADED_ONLY, EXACT, DEGRADED, HANDOVER, RESYNC, GOSSIP_LAG, PER_NODE,
          CLOCK_STEPPED_BACK, RESET)  # fmt: skip
#: Bounds at or below the capacity: a window judged at one of these is held to the limit.
AT_MOST_CAPACITY = (DEGRADED_ONLY, EXACT)


@dataclass(slots=True)
class LifeTally:
    """One life's admissions in one window."""

    times: list[int] = field(default_factory=list)
    costs: list[int] = field(default_factory=list)
    full: int = 0
    """Admitted on the merged counts (``owner``, ``forwarded``, ``local``)."""
    degraded: int = 0
    share: int = 0
    """The most its degraded decisions in this window let it admit."""
    degraded_at: list[tuple[int, int]] = field(default_factory=list)
    """``(instant, cost)`` of each degraded admission (re-sent once a gossip round)."""
    full_at: list[int] = field(default_factory=list)
    """The instant of each full-capacity admission (local mode gossips the slot then)."""
    relived: bool = False
    """Its wall clock had been later than this window's before it admitted here."""

    def add(self, at: int, cost: int, *, full: bool) -> None:
        self.times.append(at)
        self.costs.append(cost)
        if full:
            self.full += cost
            self.full_at.append(at)
        else:
            self.degraded += cost
            self.degraded_at.append((at, cost))

    @property
    def total(self) -> int:
        return self.full + self.degraded

    @property
    def last(self) -> int:
        return self.times[-1]

    def degraded_between(self, start: int, end: int) -> int:
        """Admitted in degraded mode within ``[start, end)``."""
        return sum(c for t, c in self.degraded_at if start <= t < end)

    def since(self, instant: int) -> int:
        """Admitted at or after ``instant``."""
        return sum(c for t, c in zip(self.times, self.costs, strict=True) if t >= instant)


@dataclass(slots=True)
class WindowTally:
    """One client window: capacity in force and admissions by life."""

    capacity: int = 0
    limit: int = 0
    admitted: int = 0
    lives: dict[LifeKey, LifeTally] = field(default_factory=dict)
    first_at: int = -1
    last_at: int = -1
    changed: bool = False
    """Decided under more than one (limit, capacity) (a rule change kept the series)."""

    def add(self, life: LifeKey, at: int, cost: int, *, full: bool) -> LifeTally:
        tally = self.lives.get(life)
        if tally is None:
            tally = self.lives[life] = LifeTally()
        tally.add(at, cost, full=full)
        self.admitted += cost
        if self.first_at < 0:
            self.first_at = at
        self.last_at = at
        return tally

    def paths(self) -> str:
        full = sum(t.full for t in self.lives.values())
        return f"full={full} degraded={self.admitted - full}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`judge` found for one window."""

    bound: int
    label: str
    without_knowledge: int
    """The bound had no decider known the others' counts (for naming a violation)."""
    over_one: list[tuple[LifeKey, int, int]]
    """``(life, admitted, allowed)`` for each life over its own allowance."""


def judge(
    key: WindowKey,
    window: WindowTally,
    *,
    token_bucket: bool,
    local: bool,
    resets: int,
    known: Knowledge,
    resend_ns: int = 0,
) -> Verdict:
    """The bound of one window and who, alone, went over (see the module docstring)."""
    cap = window.capacity + (window.limit if token_bucket else 0)
    full = {life: t for life, t in window.lives.items() if t.full}
    degraded_only = [t for t in window.lives.values() if not t.full]
    full_bound, synced = _full_part(key[0], cap, full, token_bucket, local, known, resend_ns)
    unsynced = (
        cap
        + sum(t.total for t in full.values())
        - max((t.total for t in full.values()), default=cap)
    )
    # A later life of a node that also decided at full capacity: its degraded admissions
    # (while it resynced) sit in the node's slot, which the earlier life's slot, handed
    # back to it, overwrites by max: they may be counted nowhere.
    shares = sum(t.share for t in degraded_only) + sum(
        t.share
        for life, t in full.items()
        if t.degraded and any(o[0] == life[0] and o[1] < life[1] for o in window.lives)
    )
    clock = sum(cap if t.full else t.share for t in window.lives.values() if t.relived)
    bound = (full_bound if full else 0) + shares + clock
    loose = (unsynced if full else 0) + shares + clock
    label = synced if full else DEGRADED_ONLY
    if full and shares:
        label = max(label, DEGRADED, key=BOUNDS.index)
    if clock:
        label = CLOCK_STEPPED_BACK
    if resets:
        # Each reset starts an epoch whose deciders know of each other only what reached
        # them after it: each epoch is held to every full decider's own capacity (fuzz seed
        # 5000172: the knowledge of the whole window bounds no single epoch).
        epoch = max(bound, cap * len(full) + shares + clock)
        bound, loose, label = (1 + resets) * epoch, (1 + resets) * max(loose, epoch), RESET
    over = []
    if not resets:
        for life, tally in window.lives.items():
            allowed = cap if tally.full else tally.share
            if not tally.relived and tally.total > allowed:
                over.append((life, tally.total, allowed))
    return Verdict(bound, label, loose, over)


def _full_part(
    client: str,
    cap: int,
    full: dict[LifeKey, LifeTally],
    token_bucket: bool,
    local: bool,
    known: Knowledge,
    resend_ns: int,
) -> tuple[int, str]:
    """What the full-capacity deciders may admit together, and the bound's name."""
    if len(full) <= 1:
        return cap, EXACT
    if token_bucket:
        # A token bucket's state merges by max (an arrival time), not by sum: concurrent
        # deciders each spend from what they saw; each is held to a bucket of its own.
        return cap * len(full), PER_NODE
    best, best_label = None, PER_NODE
    for b, tally_b in full.items():
        until = tally_b.last
        unknown = 0
        partial = relived = False
        for a, tally_a in full.items():
            if a == b:
                continue
            instant = known(a, b, client, until)
            partial |= instant != NOTHING_KNOWN
            unknown += tally_a.since(instant)
            if instant != NOTHING_KNOWN and a[0] == b[0]:
                # A restart: ``a``'s admissions left with their answers, its degraded
                # ones with the next gossip round (``resend_ns`` later).
                relived = True
                unknown += tally_a.degraded_between(instant - resend_ns, instant)
        bound = cap + unknown
        if best is None or bound < best:
            best = bound
            best_label = (GOSSIP_LAG if local else HANDOVER) if partial else PER_NODE
            if relived:
                best_label = RESYNC
            if not unknown:
                best_label = EXACT
    assert best is not None
    return best, best_label
