"""The cluster's fused counter check, :func:`admit_counter`.

:meth:`CounterStore.check` for a client with a counter in the current window (or
any token bucket) that is admitted, in one frame, with the same arithmetic as the
store and the same effect (this node's G-counter slot grows; a token bucket's
arrival time moves); everything else returns ``None`` before changing anything, and
the store's own check decides. The window arithmetic is ``fastpath``'s (its module
docstring has the derivation). ``tests/test_fastpath.py`` holds it to the store.

It lives apart from ``fastpath`` (the in-process table's fused checks) because that
module may be compiled (``docs/design.md``, "The native build") and the cluster node's
decision path stays interpreted: the node imports nothing compiled here, so a planted
bug or a patch in the node's counters takes effect as written, and an edit to the
counters does not turn off the in-process compiled path.
"""

from __future__ import annotations

from .counters import CounterStore
from .decision import NS_PER_S, Decision
from .rules import Rule

#: Builds a Decision from a full tuple (NamedTuple's own ``__new__`` is Python code).
_new = tuple.__new__


def admit_counter(
    store: CounterStore, client: str, rule: Rule, cost: int, now_ns: int, path: str
) -> Decision | None:
    """:meth:`CounterStore.check` of one limit on the merged counts (no local quota), in
    one frame, when it admits ``client`` and the client has a counter: the admitted
    :class:`Decision` (``remaining`` not capped, as the store's), counted in this node's
    slot; None, with nothing changed, for everything else (a new client, a window roll,
    a clock stepped back, a refusal, a limit of 0)."""
    counter = store._counters.get((rule.series, client))
    limit = rule.limit
    if counter is None or not limit:
        return None
    window_ns = rule.window_ns
    if rule.algo == "token_bucket":
        interval = -(-window_ns // limit)
        tolerance = (limit + rule.burst) * interval
        tat = counter.tat
        if tat < now_ns:
            tat = now_ns
        wait = tat + cost * interval - now_ns
        if wait > tolerance:
            return None
        counter.tat = wait + now_ns  # as the store: stored when admitted, even at cost 0
        remaining = (tolerance - wait) // interval
        return _new(
            Decision, (True, limit, remaining, wait / NS_PER_S, 0.0, path, False, window_ns)
        )
    now_idx, elapsed = divmod(now_ns, window_ns)
    if counter.window != now_idx:
        return None  # a window roll or a clock stepped back: the store's own check
    current = counter.cur
    burst = rule.burst
    carry = counter.carry
    if carry > burst:  # the rule's burst shrank since the carry was earned
        carry = burst
    rest_ns = window_ns - elapsed
    # ``free - ceil(held / W)``, as ``check_window`` (the module docstring has why).
    remaining = limit + burst - cost - (current._count if current._more is None else current.total)
    previous = counter.prev
    if rule.algo == "sliding_window" and (previous._count or previous._more):
        prev = previous._count if previous._more is None else previous.total
        held = -(-prev * rest_ns // window_ns)
        remaining -= held if held > carry else carry
    else:
        remaining -= carry
    if remaining < 0:
        return None
    if cost:
        node = store.node_id
        if current._node == node:
            current._count += cost
        elif current._node is None:
            current._node, current._count = node, cost
        else:
            current.increment(node, cost)
    return _new(Decision, (True, limit, remaining, rest_ns / NS_PER_S, 0.0, path, False, window_ns))
