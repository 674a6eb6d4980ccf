"""What every part of the front-end benchmark agrees on: the rule, the clients, the
generator settings, the pinning, the order of runs, and the targets."""

from __future__ import annotations

RULE_OPEN = "1000000000/minute"
N_CLIENTS = 1000
HTTP_CONNS = (16, 64)
RESP_CONNS = 50
PIPELINES = (1, 16)
SERVER_CPU, LOAD_CPU = 1, 0
#: Targets from the issues: absolute rates (an earlier issue), and same-run ratios (issue 14:
#: ML.CHECK -P16 at least 20% of redis-server's INCR, HTTP at least 0.9x bare aiohttp).
TARGET_RESP = 100_000
TARGET_RESP_VS_REDIS = 0.20
TARGET_HTTP = 15_000
TARGET_HTTP_VS_FLOOR = 0.9
#: The order of the runs within a repetition: each meshlimit setting next to its peers, so
#: that a pair shares the machine's conditions (the ratios are also taken per repetition).
RUN_ORDER = [
    *("http-c16", "floorh-c16", "http-c64", "floorh-c64"),
    *("ml-P1", "floor-P1", "incrr-P1", "incr-P1", "thr-P1"),
    *("ml-P16", "floor-P16", "incrr-P16", "incr-P16", "thr-P16"),
]
#: A timed run during which other work took more than this many cores is redone.
OTHER_LIMIT = 0.4
#: A run during which other work took at most this many cores counts as quiet (its own column:
#: a busy core elsewhere slows even the runs under ``OTHER_LIMIT``, through the generator).
QUIET_OTHER = 0.1
