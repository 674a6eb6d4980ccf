"""Lifeguard's suspicion timer: how long a suspect has to refute before it is declared dead.

Theory of operation. A suspicion starts when a first member accuses the suspect (a failed
probe of ours, or news of a suspicion). Its deadline starts at ``max_ns``, which is
``suspicion_max_mult`` base timeouts, and shrinks towards ``min_ns``, the base timeout, on a
log scale as other members confirm the suspicion, reaching it at ``expected`` confirmations
(Lifeguard's K, see :func:`~meshlimit.cluster.membership.timing.expected_confirmations`).
So a lone, perhaps slow, accuser gives a live member long enough to refute, while a failure
that many members see is declared after the base timeout. This is memberlist's
suspicion.go, except that the timer is a deadline its owner compares with ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def lifeguard_timeout_ns(min_ns: int, max_ns: int, expected: int, confirmed: int) -> int:
    """Suspicion timeout after ``confirmed`` of ``expected`` confirmations (Lifeguard):
    ``max - (max - min) * log(c + 1) / log(k + 1)``, never below ``min``."""
    if expected < 1 or confirmed >= expected:
        return min_ns
    frac = math.log(confirmed + 1) / math.log(expected + 1)
    return max(min_ns, int(max_ns - frac * (max_ns - min_ns)))


@dataclass(slots=True)
class Suspicion:
    """One running suspicion: its accusers so far, and the deadline they earned."""

    started_ns: int
    min_ns: int
    max_ns: int
    expected: int
    confirmers: set[str] = field(default_factory=set)  # membership tests only, never iterated
    deadline: int = 0

    @classmethod
    def start(cls, now_ns: int, min_ns: int, max_ns: int, expected: int, accuser: str) -> Suspicion:
        """A suspicion raised by ``accuser`` at ``now_ns``: the long, unconfirmed timeout."""
        suspicion = cls(now_ns, min_ns, max_ns, expected, {accuser})
        suspicion.deadline = now_ns + lifeguard_timeout_ns(min_ns, max_ns, expected, 0)
        return suspicion

    def confirm(self, node: str) -> None:
        """``node`` reports the same suspicion: if it is a new accuser, bring the deadline in."""
        if node in self.confirmers or len(self.confirmers) > self.expected:
            return
        self.confirmers.add(node)
        confirmed = len(self.confirmers) - 1  # the first accuser does not count (memberlist)
        timeout = lifeguard_timeout_ns(self.min_ns, self.max_ns, self.expected, confirmed)
        self.deadline = self.started_ns + timeout
