"""What every part of the fuzz campaign agrees on: the targets, their input bounds, the
datagram separator, the fixed instant, and how a finding is named."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

TARGETS = ("codec", "rules", "resp", "auth", "node", "http")
#: libFuzzer's -max_len per target: a datagram budget, a rule's bound, a few frames.
MAX_LEN = {"codec": 1400, "rules": 256, "resp": 4096, "auth": 2048, "node": 4096, "http": 2048}
#: Separates datagrams in a node input: 0xc1 is the one byte msgpack never uses.
SEP = b"\xc1NEXT\xc1"
T0 = 1_700_000_040_000_000_000  # a wall-clock instant on a minute boundary
MAX_RESTARTS = 20
#: Address space of a fuzzing child: an input that makes the code allocate gigabytes then
#: fails at once with MemoryError (a finding) instead of stalling the run or the machine.
CHILD_ADDRESS_SPACE_BYTES = 4 << 30
AUTH_KEYS = (b"k" * 32, b"rotated-key-0123456789")


CLIENTS = ("c1", "c2", "c3", "x" * 256)


class Finding(Exception):
    """An oracle failed: a bug in meshlimit, or in this harness."""


def fingerprint(error: BaseException) -> str:
    """Exception type and the innermost frame inside meshlimit (or the script)."""
    frames = traceback.extract_tb(error.__traceback__)
    inner = [
        f
        for f in frames
        if "meshlimit" in f.filename or "/cluster/" in f.filename or "/core/" in f.filename
    ] or frames
    where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    return f"{type(error).__name__} at {where}"


def signature(error: BaseException) -> str:
    """What makes two findings the same: where an exception came from, or what an oracle
    said (numbers blanked, so one bug found with many inputs is one finding)."""
    if not isinstance(error, Finding):
        return fingerprint(error)
    if error.__cause__ is not None:
        return f"Finding: {fingerprint(error.__cause__)}"
    return "Finding: " + re.sub(r"\d+", "N", str(error).splitlines()[0])[:80]
