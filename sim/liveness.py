"""What the world knows of a node when it reports news about that node (to the checkers)."""

from __future__ import annotations

from enum import Enum


class Liveness(Enum):
    """What the world knows of a node at the instant it reports news about that node."""

    RUNNING = "running"
    """Up and taking input."""
    PAUSED = "paused"
    """Up, but its process is stopped: datagrams wait in its socket buffer."""
    DOWN = "down"
    """Crashed or left (no node runs under that name), or not a node of this world."""
