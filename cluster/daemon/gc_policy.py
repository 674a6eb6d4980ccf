"""The daemon's garbage-collector settings: fewer, cheaper collections of a heap of counters.

Why. A node keeps a few objects per client counter (the counter, its G-counters, its key)
for as long as the client is active, and none of them form reference cycles; yet
CPython's collector walks all of them in every full collection, and starts one each time
a quarter more objects have survived into the oldest generation. Measured on three daemons
under ``scripts/bench_cluster.py``'s saturation load (100,000 random keys): full
collections took 14-19% of a daemon's CPU, 0.1-0.16 s each, during which the node
answers nothing (a forwarded check's tail latency, a probe's ack).

What. Once the daemon has started (``settle``): everything allocated so far (modules,
classes, the configuration) is moved out of the collector's sight (``gc.freeze``), and
the thresholds are raised (:data:`THRESHOLDS`), so that the short-lived objects of the
check path (batches, decisions, replies) die in the young generations instead of being
promoted, and promoted objects start a full collection far less often. Cyclic garbage is
still collected, later. Only the daemon does this: an embedding application's collector
is its own.
"""

from __future__ import annotations

import gc

#: ``gc.set_threshold`` of the daemon. Why: a young collection every 5,000 allocations (not
#: 700) takes ~1 ms at most on a busy node, and a check's objects live well under that
#: many allocations; the middle generation is collected every 50 young collections (not
#: 10), so only objects that outlive ~250,000 allocations (a fraction of a second at full
#: speed) reach the oldest one; a full collection is considered every 100 middle ones
#: (not 10), still only once a quarter more objects have been promoted (CPython's rule).
THRESHOLDS = (5_000, 50, 100)


def settle() -> None:
    """Freeze what startup allocated and raise the thresholds (see the module docstring)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
