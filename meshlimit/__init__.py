"""meshlimit: distributed rate limiting for Python services.

``Limiter`` enforces per-client limits in one process; the cluster (``Node``)
enforces them across many. ``Rule`` is the notation (``"100/minute burst 20"``)
and ``Decision`` the answer to a check.
"""

from meshlimit.core.decision import Decision
from meshlimit.core.rules import Rule
from meshlimit.limiter import Limiter
from meshlimit.node import Node

__all__ = ["Decision", "Limiter", "Node", "Rule"]
__version__ = "0.1.0"
