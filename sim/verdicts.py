"""Verdicts: a broken invariant, and per-decision findings gathered into one per kind and life.

A bound broken by a window is one :class:`Violation`. A rule broken by a decision (a
minority deciding at full capacity, a node deciding a client it does not own) is usually
broken by every decision of that life for a while: :class:`Findings` keeps the first of
them per kind and life, with how many there were, so a report names the life, the instant
and the client once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import NS_PER_S
from .history import Life


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken invariant, with what is needed to find it again."""

    kind: str
    detail: str
    client: str = ""
    window: int = -1
    nodes: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f" client={self.client} window={self.window}" if self.client else ""
        nodes = f" nodes={','.join(self.nodes)}" if self.nodes else ""
        return f"{self.kind}:{where}{nodes} {self.detail}"


class Findings:
    """Per-decision verdicts, one :class:`Violation` per kind and life (with a count)."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, tuple[str, int]], Violation] = {}
        self._count: dict[tuple[str, tuple[str, int]], int] = {}

    def add(self, kind: str, life: Life, client: str, now: int, detail: str) -> None:
        """``life`` broke ``kind`` at ``now`` deciding for ``client``."""
        key = (kind, life.key)
        if key not in self._first:
            where = f"{life.node} (life {life.number}) at {now / NS_PER_S:.6f} s"
            self._first[key] = Violation(kind, f"{where}: {detail}", client, -1, (life.node,))
        self._count[key] = self._count.get(key, 0) + 1

    def violations(self) -> list[Violation]:
        out = []
        for key, first in self._first.items():
            count = self._count[key]
            more = f" ({count} decisions)" if count > 1 else ""
            out.append(
                Violation(first.kind, first.detail + more, first.client, first.window, first.nodes)
            )
        return out
