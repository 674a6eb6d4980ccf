"""Virtual time for the simulator: the seed, the event queue, and per-node clocks.

Theory of operation. A simulation run is a loop that pops the earliest event
from an :class:`EventQueue`, sets the :class:`VirtualClock` to its time and
hands the event to whoever owns it. Nothing reads a real clock and nothing
draws from the global ``random`` module: every random stream comes from
:func:`derive_rng`, which hashes the run's one seed with a name, so a run is
reproduced by its seed alone (TigerBeetle's VOPR, FoundationDB's simulation)
and adding a new stream never shifts the numbers an old stream draws.

Ties in time are broken by a sequence number given at ``push``, so events at
the same instant come out in the order they were scheduled -- never by
comparing the events themselves, which may not be orderable and whose order
would otherwise depend on their contents.

Each node sees time through a :class:`NodeClock`: true (virtual) time plus an
offset, a rate error in parts per million, and steps ("jumps"), the three
ways real wall clocks go wrong. The monotonic reading drifts but never steps.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass
from typing import Generic, TypeVar

E = TypeVar("E")

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

#: Wall-clock time of virtual instant 0 (2026-01-01T00:00:00Z), for drivers that want
#: plausible Unix-epoch wall clocks. Fixed, so traces do not depend on when a run happened.
SIM_EPOCH_NS = 1_767_225_600 * NS_PER_S

#: Drift is kept in parts per billion so the clock arithmetic stays in exact integers.
_PPB_PER_PPM = 1_000


def derive_rng(seed: int, *names: str) -> random.Random:
    """An independent ``random.Random`` for the stream ``names`` of the run ``seed``.

    Why hashing: ``Random(seed + 1)`` style derivations correlate streams and make
    the stream depend on creation order. BLAKE2b of the seed and the
    length-prefixed names gives unrelated 256-bit seeds for distinct paths, e.g.
    ``derive_rng(7, "network")`` and ``derive_rng(7, "workload")``, and
    ``("a", "bc")`` never collides with ``("ab", "c")``.
    """
    assert isinstance(seed, int), f"seed must be an int, got {seed!r}"
    digest = hashlib.blake2b(digest_size=32, person=b"meshlimit.sim")
    digest.update(str(seed).encode())
    for name in names:
        data = name.encode()
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return random.Random(int.from_bytes(digest.digest(), "big"))


class EventQueue(Generic[E]):
    """A min-heap of ``(time_ns, seq, event)``: earliest first, FIFO among equal times.

    Complexity: ``push``, ``pop`` and ``pop_due`` are O(log n), ``peek_time`` and ``len`` O(1).
    Scheduling into the past (before the last popped time) is a driver bug and
    asserts, because it would let an effect precede its cause.
    """

    __slots__ = ("_heap", "_seq", "_last_popped_ns")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, E]] = []
        self._seq = 0
        self._last_popped_ns = 0

    def push(self, at_ns: int, event: E) -> None:
        """Schedule ``event`` at virtual time ``at_ns`` (an int, not before the last pop)."""
        assert type(at_ns) is int, f"event time must be an int of ns, got {at_ns!r}"
        assert at_ns >= self._last_popped_ns, (
            f"event scheduled at {at_ns} ns, in the past of {self._last_popped_ns} ns"
        )
        heapq.heappush(self._heap, (at_ns, self._seq, event))
        self._seq += 1

    def pop(self) -> tuple[int, E]:
        """Remove and return the earliest ``(time_ns, event)``; ``IndexError`` when empty."""
        at_ns, _, event = heapq.heappop(self._heap)
        self._last_popped_ns = at_ns
        return at_ns, event

    def pop_due(self, end_ns: int) -> tuple[int, E] | None:
        """``pop()`` if the earliest event is due by ``end_ns``, else ``None`` (one call
        where a driver's loop would make two)."""
        heap = self._heap
        if not heap or heap[0][0] > end_ns:
            return None
        at_ns, _, event = heapq.heappop(heap)
        self._last_popped_ns = at_ns
        return at_ns, event

    def peek_time(self) -> int | None:
        """Time of the earliest event, or ``None`` when the queue is empty."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def _check(self) -> None:
        """Assert the heap invariant and that no event is in the past (for tests)."""
        heap = self._heap
        for i in range(1, len(heap)):
            parent = heap[(i - 1) // 2]
            assert parent[:2] < heap[i][:2], f"heap order broken at index {i}"
        assert all(entry[0] >= self._last_popped_ns for entry in heap)
        assert all(entry[1] < self._seq for entry in heap)


@dataclass(slots=True)
class VirtualClock:
    """The simulation's true time. Only the driver's loop advances it, and only forward."""

    now_ns: int = 0

    def advance_to(self, at_ns: int) -> None:
        """Move to ``at_ns``; moving backwards is a driver bug and asserts."""
        assert at_ns >= self.now_ns, f"virtual time moved back from {self.now_ns} to {at_ns}"
        self.now_ns = at_ns


class NodeClock:
    """One node's view of time: a drifting monotonic clock and a skewed, jumpable wall clock.

    ``wall_ns(t) = epoch_ns + t + offset_ns + t * drift_ppm / 1e6`` until the drift or
    offset is changed; changes take effect from the instant given, so the clock
    stays continuous across a drift change and steps only on ``jump`` or
    ``set_skew``. ``mono_ns`` has the same drift and never steps, like
    ``CLOCK_MONOTONIC``. All readings are integers (drift is kept in ppb and
    rounded down), so the same inputs give the same readings everywhere.
    """

    __slots__ = (
        "_anchor_true_ns",
        "_anchor_mono_ns",
        "_wall_minus_mono_ns",
        "_drift_ppb",
        "_epoch_ns",
    )

    def __init__(self, offset_ns: int = 0, drift_ppm: float = 0.0, *, epoch_ns: int = 0) -> None:
        self._anchor_true_ns = 0
        self._anchor_mono_ns = 0
        self._wall_minus_mono_ns = epoch_ns + offset_ns
        self._drift_ppb = _to_ppb(drift_ppm)
        self._epoch_ns = epoch_ns

    @property
    def drift_ppm(self) -> float:
        """The current rate error in parts per million (positive: the clock runs fast)."""
        return self._drift_ppb / _PPB_PER_PPM

    def mono_ns(self, true_ns: int) -> int:
        """The node's monotonic reading at true time ``true_ns``: drifts, never steps."""
        elapsed = true_ns - self._anchor_true_ns
        return self._anchor_mono_ns + elapsed + elapsed * self._drift_ppb // 1_000_000_000

    def wall_ns(self, true_ns: int) -> int:
        """The node's wall-clock reading at true time ``true_ns``: offset, drift and jumps."""
        return self.mono_ns(true_ns) + self._wall_minus_mono_ns

    def readings(self, true_ns: int) -> tuple[int, int]:
        """``(mono_ns(true_ns), wall_ns(true_ns))``, computed once: a driver passes both."""
        elapsed = true_ns - self._anchor_true_ns  # mono_ns(true_ns), inlined: once per event
        mono = self._anchor_mono_ns + elapsed + elapsed * self._drift_ppb // 1_000_000_000
        return mono, mono + self._wall_minus_mono_ns

    def skew_ns(self, true_ns: int) -> int:
        """How far the wall clock is ahead of true time (plus epoch) at ``true_ns``."""
        return self.wall_ns(true_ns) - true_ns - self._epoch_ns

    def jump(self, delta_ns: int) -> None:
        """Step the wall clock by ``delta_ns`` (an NTP step, a VM resume); monotonic unmoved."""
        self._wall_minus_mono_ns += delta_ns

    def set_skew(self, skew_ns: int, *, at_true_ns: int) -> None:
        """Step the wall clock so that it reads ``skew_ns`` ahead of true time at ``at_true_ns``."""
        mono = self.mono_ns(at_true_ns)
        self._wall_minus_mono_ns = self._epoch_ns + at_true_ns + skew_ns - mono

    def set_drift(self, drift_ppm: float, *, at_true_ns: int) -> None:
        """Change the rate error from ``at_true_ns`` on, without stepping either reading."""
        self._anchor_mono_ns = self.mono_ns(at_true_ns)
        self._anchor_true_ns = at_true_ns
        self._drift_ppb = _to_ppb(drift_ppm)

    def __repr__(self) -> str:
        return (
            f"NodeClock(skew_at_anchor={self.skew_ns(self._anchor_true_ns)}ns, "
            f"drift_ppm={self.drift_ppm})"
        )


def _to_ppb(drift_ppm: float) -> int:
    ppb = round(drift_ppm * _PPB_PER_PPM)
    # A clock at -1e6 ppm stands still; below that it runs backwards, which no real clock does.
    assert -1_000_000_000 < ppb < 1_000_000_000, f"drift {drift_ppm} ppm is not a clock"
    return ppb
