"""A write a node makes is the entry it holds for that key right after (``own_write_lost``).

``docs/design.md`` (*Rules*): every registry entry carries a hybrid logical clock stamp
``(wall_ms, counter, node)``, the newest stamp wins, and a node's clock observes every stamp
it takes in (``core/hlc.observe``: the larger wall millisecond, then one above the larger
counter), so each write it makes is stamped above every entry it holds -- a write follows,
in stamp order, everything its writer has seen (causality: an operator who reads a rule
and changes it at any node changes it). So right after a write at node ``N``, ``N``'s
registry holds that write: its stamp names ``N``. An entry of another node kept instead
means the write was stamped below one ``N`` had taken in: lost at once, everywhere.

The world hands the entry the writer holds right after each timeline write
(``Checkers.on_rule_change``); no node is read here. Added for the planted bug
``hlc_observe_drops_remote_counter`` (a stamp received in the receiver's own millisecond
keeps the receiver's counter, not one above the larger), which the shipped scenario
``hlc_relay_same_ms`` reaches: a stamp whose counter was raised at a third node arrives
in the writer's own millisecond, between two of its writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .history import Life

Finding = Callable[[str, "Life", str, int, str], None]


def own_write_kept(
    finding: Finding, writer: Life | None, key: str, held: Sequence[Any], now: int
) -> None:
    """``writer`` just wrote ``key``; ``held`` is the stamp of the entry it holds now."""
    if writer is None or str(held[2]) == writer.node:
        return
    finding(
        "own_write_lost", writer, key, now,
        f"its write of {key} is not the entry it holds right after: it keeps"
        f" {tuple(held)} of {held[2]}, so the write was stamped below a stamp it had taken in",
    )  # fmt: skip
