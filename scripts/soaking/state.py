"""What the soak's threads share: its timings, the records of answers and faults, and the
state the load threads, the memory sampler and the fault loop hand each other.

Theory of operation: the fault loop takes a node out of ``Shared.up`` just before killing
it and puts it back, with a new life number, once it is ready again; the load threads
only send to nodes in ``up`` (and open a fresh connection to each new life); every thread
appends under ``Shared.lock`` and stops when ``Shared.stop`` is set.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field

NODE_NAMES = ("n1", "n2", "n3")
KILL_EVERY_S = (20.0, 40.0)
RESTART_AFTER_S = (5.0, 10.0)
#: A fault's windows last until this long after every node sees three alive members.
SETTLE_S = 5.0
#: No kill starts this close to the end: the node must restart and rejoin in the run.
QUIET_END_S = 25.0
REJOIN_TIMEOUT_S = 30.0
RSS_EVERY_S = 1.0
HTTP_TIMEOUT_S = 5.0
#: A thread this far behind its schedule drops the missed checks.
MAX_LAG_S = 1.0


@dataclass(frozen=True, slots=True)
class Answer:
    """One answered check."""

    client: str
    node: str
    path: str
    allowed: bool
    window: int
    latency_ns: int


@dataclass
class Fault:
    """A kill and what followed; ``settled`` is None until the cluster is whole again."""

    node: str
    killed: float
    restarted: float | None = None
    alive: float | None = None

    def span(self, end: float) -> tuple[float, float]:
        """Wall-clock span whose windows are judged against the fault bound."""
        return self.killed, (self.alive + SETTLE_S) if self.alive is not None else end + 1


@dataclass
class Shared:
    """State shared by the load threads, the sampler and the fault loop."""

    up: dict[str, int] = field(default_factory=dict)
    """Node name -> life number, for nodes the load may send to."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[Answer] = field(default_factory=list)
    unavailable: Counter[str] = field(default_factory=Counter)
    http_errors: list[str] = field(default_factory=list)
    skipped: int = 0
    rss: dict[tuple[str, int], list[tuple[float, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
