"""Types of the C hot path (``_hotpath.c``; built by ``setup.py`` when a compiler is found)."""

from .decision import Decision
from .rules import Rule

def check_window(
    buckets: list[bytearray | None],
    key: int,
    rule: Rule,
    sliding: bool,
    cost: int,
    now_ns: int,
    path: str,
    /,
) -> Decision | None: ...
