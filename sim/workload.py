"""Workload: a deterministic stream of rate-limit checks for the simulator.

Theory of operation. Requests arrive as a Poisson process at ``rate`` per
second of virtual time (exponential gaps between arrivals). Each names a
client drawn from ``clients`` ids ``c0 .. c{N-1}`` whose popularity follows a
Zipf law with exponent ``zipf`` (``c0`` the most popular; exponent 0 is
uniform) and enters the cluster at a node chosen uniformly. An optional hot
client adds its own Poisson stream at ``hot_rate``, so one client can be
pushed far over its limit while the background load continues. The two
streams are merged by time.

The workload keeps the next arrival of each stream pending. ``peek_ns`` is the
time of the earliest; ``next_request`` takes it and draws the stream's next
gap. A rate change at ``now_ns`` redraws that stream's pending arrival from
``now_ns``, which is exact for a Poisson process (it is memoryless), so a
driver must re-read ``peek_ns`` after changing a rate.

Cost. Client choice is a bisect over precomputed cumulative weights,
O(log N) with O(N) floats of memory; everything else is O(1). All draws come
from the one ``random.Random`` given, in a fixed order.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Hashable, Iterator, Sequence
from random import Random
from typing import NamedTuple

from meshlimit.sim.events import NS_PER_S
from meshlimit.sim.scenario import WorkloadSpec

#: The time of an arrival that never comes (a stream with rate 0).
NEVER_NS = 2**63 - 1


class Request(NamedTuple):
    """One check: at ``at_ns`` ``client`` asks ``entry_node`` to spend ``cost``."""

    at_ns: int
    client: str
    entry_node: Hashable
    cost: int


#: Builds a Request from a full tuple, skipping NamedTuple's Python-level ``__new__``.
_request = tuple.__new__


def zipf_cumulative(clients: int, exponent: float) -> list[float]:
    """Cumulative Zipf weights normalised to end at exactly 1.0 (for ``bisect_right``)."""
    assert clients >= 1 and exponent >= 0
    cumulative = list(
        itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, clients + 1))
    )
    total = cumulative[-1]
    cumulative = [weight / total for weight in cumulative]
    cumulative[-1] = 1.0  # rounding must never let a draw in [0, 1) fall past the end
    return cumulative


class Workload:
    """A merged Poisson stream of requests; see the module docstring."""

    def __init__(
        self,
        rng: Random,
        nodes: Sequence[Hashable],
        *,
        clients: int,
        rate: float,
        zipf: float = 1.1,
        hot_client: str | None = None,
        hot_rate: float = 0.0,
        cost: int = 1,
        start_ns: int = 0,
    ) -> None:
        assert clients >= 1 and rate >= 0 and hot_rate >= 0 and cost >= 1
        self._rng = rng
        self._nodes: tuple[Hashable, ...] = ()
        self.set_nodes(nodes)
        self._client_ids = [f"c{i}" for i in range(clients)]
        self._uniform = zipf == 0
        self._cumulative = [] if self._uniform else zipf_cumulative(clients, zipf)
        self.cost = cost
        self.rate = rate
        self.hot_client = hot_client
        self.hot_rate = hot_rate
        self._last_ns = start_ns
        self._next_ns = self._first_arrival(rate, start_ns)
        self._next_hot_ns = self._first_arrival(hot_rate if hot_client else 0.0, start_ns)
        self.generated = 0

    @classmethod
    def from_spec(
        cls, spec: WorkloadSpec, nodes: Sequence[Hashable], rng: Random, *, start_ns: int = 0
    ) -> Workload:
        """The workload a scenario's ``[workload]`` table describes."""
        return cls(
            rng, nodes, clients=spec.clients, rate=spec.rate, zipf=spec.zipf,
            hot_client=spec.hot_client, hot_rate=spec.hot_rate, cost=spec.cost, start_ns=start_ns,
        )  # fmt: skip

    def _first_arrival(self, rate: float, now_ns: int) -> int:
        if rate <= 0:
            return NEVER_NS
        return now_ns + int(self._rng.expovariate(rate) * NS_PER_S)

    # --- the stream ---------------------------------------------------------------------

    def peek_ns(self) -> int:
        """Time of the next request, ``NEVER_NS`` if every rate is zero."""
        return min(self._next_ns, self._next_hot_ns)

    def next_request(self, now_ns: int | None = None) -> Request | None:
        """Take the next request in time order, or ``None`` if no traffic will ever come.

        ``now_ns``, if given, is the driver's current time: the request returned is
        never earlier (asserted), so a driver that falls behind finds out at once.
        """
        rng = self._rng
        if self._next_ns <= self._next_hot_ns:
            at_ns = self._next_ns
            if at_ns == NEVER_NS:
                return None
            if self._uniform:
                client = self._client_ids[int(rng.random() * len(self._client_ids))]
            else:
                client = self._client_ids[bisect_right(self._cumulative, rng.random())]
            self._next_ns = at_ns + int(rng.expovariate(self.rate) * NS_PER_S)
        else:
            at_ns = self._next_hot_ns
            client = self.hot_client  # type: ignore[assignment]  # set when its rate > 0
            self._next_hot_ns = at_ns + int(rng.expovariate(self.hot_rate) * NS_PER_S)
        assert now_ns is None or at_ns >= now_ns, f"request at {at_ns} is before now {now_ns}"
        nodes = self._nodes
        self._last_ns = at_ns
        self.generated += 1
        entry = nodes[int(rng.random() * len(nodes))]
        return _request(Request, (at_ns, client, entry, self.cost))  # Request(...), cheaper

    def requests_until(self, end_ns: int) -> Iterator[Request]:
        """Every request before ``end_ns``, in time order (for runs with no rate changes)."""
        while self.peek_ns() < end_ns:
            request = self.next_request()
            assert request is not None
            yield request

    # --- changes over time --------------------------------------------------------------

    def set_rate(self, rate: float, *, now_ns: int) -> None:
        """Change the background rate from ``now_ns``; redraws its pending arrival."""
        assert rate >= 0 and now_ns >= self._last_ns
        self.rate = rate
        self._next_ns = self._first_arrival(rate, now_ns)

    def set_hot(self, client: str | None, rate: float, *, now_ns: int) -> None:
        """Make ``client`` hot at ``rate`` from ``now_ns`` (``None`` or rate 0 stops it)."""
        assert rate >= 0 and now_ns >= self._last_ns
        self.hot_client, self.hot_rate = client, rate
        self._next_hot_ns = self._first_arrival(rate if client else 0.0, now_ns)

    def set_nodes(self, nodes: Sequence[Hashable]) -> None:
        """Change where requests may enter (e.g. leave out crashed nodes); order matters."""
        assert len(nodes) > 0, "requests need at least one entry node"
        self._nodes = tuple(nodes)

    # --- expectations, for checkers and tests -------------------------------------------

    def share(self, index: int) -> float:
        """The expected share of background requests that go to client ``c{index}``."""
        if self._uniform:
            return 1.0 / len(self._client_ids)
        below = self._cumulative[index - 1] if index else 0.0
        return self._cumulative[index] - below
