"""The daemon's collector settings (``cluster/daemon/gc_policy.py``): after ``settle`` what
startup allocated is frozen out of the collector's sight and the thresholds are the
daemon's; the test puts the process's own settings back."""

from __future__ import annotations

import gc

from meshlimit.cluster.daemon import gc_policy


def test_settle_freezes_startup_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    startup = [object() for _ in range(10)]  # stands for what the daemon built
    try:
        gc_policy.settle()
        assert gc.get_threshold() == gc_policy.THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert all(t > d for t, d in zip(gc_policy.THRESHOLDS, (700, 10, 10), strict=True))
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert startup
