"""What every part of the cluster benchmark agrees on: the rule, the clients, the
concurrency levels, and the targets the report judges against."""

from __future__ import annotations

RULE = "1000000/minute"
N_CLIENTS = 1000
#: Concurrency of the closed-loop maximum: enough in-flight checks to fill 40-check batches.
K_MAX = 256
#: Extra concurrency levels for the forwarded sweep (default batching only).
K_SWEEP = (16, 64)
REDIS_THREADS = 4
#: Subjects whose client runs several threads: "ceiling" does not apply.
MULTI_THREADED = {"redis-t"}
#: Targets from the issue.
TARGET_FWD = 50_000
TARGET_FWD_AIM = 100_000
TARGET_P99_MS = 2.0
TARGET_VS_REDIS = 4.0
TARGET_LOCAL_RATIO = 1.5
ISSUE_REDIS_HITS = 11_400
