"""meshlimit: distributed rate limiting for Python services.

``Limiter`` enforces per-client limits in one process; the cluster (``Node``)
enforces them across many. ``Rule`` is the notation (``"100/minute burst 20"``)
and ``Decision`` the answer to a check.

The four names load on first use (PEP 562), and this module imports nothing of
meshlimit's at import time but the native build's guard. Why: every layer is imported
through this package (``meshlimit.core``, ``meshlimit.cluster``, ``meshlimit.sim`` all
run this file first), and ``Node`` brings asyncio, msgpack and the runtime, which an
in-process ``Limiter`` user, or the pure core, must not pay for. ``tests/test_layout.py``
holds this. The guard (``_native``) runs first for the same reason: before any module
of the core loads, it decides whether the compiled ones may (their sources unedited,
``MESHLIMIT_PURE`` unset).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from meshlimit import _native

_native.install()

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time see __getattr__
    from meshlimit.core.decision import Decision
    from meshlimit.core.rules import Rule
    from meshlimit.limiter import Limiter
    from meshlimit.node import Node

__all__ = ["Decision", "Limiter", "Node", "Rule"]
__version__ = "0.1.0"

#: Where each public name lives; the module is imported on the name's first access.
_HOMES = {
    "Decision": "meshlimit.core.decision",
    "Limiter": "meshlimit.limiter",
    "Node": "meshlimit.node",
    "Rule": "meshlimit.core.rules",
}


def __getattr__(name: str) -> object:
    """Import a public name's module on first access and keep the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    """The module's names, the public ones included before they are loaded."""
    return sorted({*globals(), *__all__})
