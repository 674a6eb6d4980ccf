"""The structure-aware mutator of the msgpack targets (codec, node): half of the mutations
unpack a datagram, change one value (boundary ints, bound-length strings, a subtree from
another seed, a type swap) and repack it; the other half are libFuzzer's byte mutations."""

from __future__ import annotations

import contextlib
from typing import Any

from fuzzing.common import SEP, T0

_INTS = [
    0,
    1,
    -1,
    2,
    3,
    4,
    5,
    6,
    7,
    10,
    11,
    12,
    13,
    14,
    15,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    2**32 - 1,
    2**32,
    2**52,
    2**53,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    T0,
    T0 // 10**6,
    T0 // 60_000_000_000,
    -(T0 // 60_000_000_000),
]
_STRS = [
    "",
    "a",
    "b",
    "c",
    "c1",
    "x" * 64,
    "x" * 65,
    "é" * 64,
    "x" * 255,
    "x" * 256,
    "x" * 257,
    "default",
    "client:c1",
    "client:",
    "tier:gold",
    "reset:c1",
    "@gold",
    "@",
    "10/minute",
    "0/minute",
    "sliding_window:60000000000",
    "token_bucket:1000000000",
    "fixed_window:1000000",
    "sliding_window:0",
    "sliding_window:99999999999999999999",
    "sliding_window:",
    ":",
    "\x00",
    "\U0001f600",
]


class Mutator:
    def __init__(self, seeds: list[bytes]) -> None:
        import msgpack

        self.msgpack = msgpack
        self.donors: list[Any] = []
        for seed in seeds:
            for part in seed.split(SEP):
                with contextlib.suppress(Exception):
                    self._collect(msgpack.unpackb(part, raw=False))

    def _collect(self, obj: Any) -> None:
        self.donors.append(obj)
        if isinstance(obj, list):
            for item in obj:
                self._collect(item)

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        import random

        import atheris

        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        parts = data.split(SEP)
        op = rng.random()
        if op < 0.1 and len(parts) > 1:
            del parts[rng.randrange(len(parts))]
        elif op < 0.2:
            parts.insert(rng.randrange(len(parts) + 1), parts[rng.randrange(len(parts))])
        else:
            i = rng.randrange(len(parts))
            try:
                obj = self.msgpack.unpackb(parts[i], raw=False)
                parts[i] = self.msgpack.packb(self._mutate(obj, rng, 0), use_bin_type=True)
            except Exception:
                return atheris.Mutate(data, max_size)
        out = SEP.join(parts)
        return out if len(out) <= max_size else atheris.Mutate(data, max_size)

    def _mutate(self, obj: Any, rng: Any, depth: int) -> Any:
        if isinstance(obj, list) and obj and depth < 8 and rng.random() < 0.7:
            i = rng.randrange(len(obj))
            op = rng.random()
            if op < 0.7:
                obj[i] = self._mutate(obj[i], rng, depth + 1)
            elif op < 0.8:
                obj.insert(i, obj[i])
            elif op < 0.9:
                del obj[i]
            else:
                obj.append(rng.choice(self.donors))
            return obj
        op = rng.random()
        if op < 0.2:
            return rng.choice(self.donors)
        if isinstance(obj, bool) or obj is None or op < 0.3:
            return rng.choice([True, False, None, 0, 1, [], "", rng.choice(_INTS)])
        if isinstance(obj, int):
            return rng.choice([rng.choice(_INTS), obj + rng.choice((-1, 1)), obj * 2, -obj])
        if isinstance(obj, str):
            return rng.choice([rng.choice(_STRS), obj + obj, obj[:-1], obj + "é"])
        return rng.choice(_INTS)
