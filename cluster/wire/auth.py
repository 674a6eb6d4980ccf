"""Authenticated datagrams: a MAC over every packet, and replay protection.

With a cluster key every datagram leaves as ``payload || trailer`` where the
trailer is ``boot (8) | seq (8) | sent_ns (8) | mac (16)``:

- ``mac`` is HMAC-SHA256 over everything before it, truncated to 128 bits,
  under the sender's primary key; a receiver accepts any key of its keyring,
  so keys rotate without downtime (add the new key everywhere, make it
  primary everywhere, then drop the old one). Packets that fail are dropped
  and counted before any byte of the payload is decoded.
- ``boot`` is the sender's boot id, new in every process life, and ``seq``
  a counter of its datagrams: the receiver keeps, per boot, the highest
  sequence number seen and a 1,024-bit window below it (as IPsec does), so a
  captured datagram replayed later is refused — it cannot consume a client's
  quota twice. A restarted sender counts from 1 again under a new boot, so
  its new life gets a fresh window; a boot id that repeated (drawn from a
  seeded RNG, as ``--seed-rng`` once did) had peers drop the new life's
  datagrams as replays, and the node never rejoined.
- ``sent_ns`` is the sender's wall clock: a datagram older than ``max_age``
  is refused, which bounds how long the per-boot windows must be kept.

Pure: time comes in as ``now_ns``; the boot id comes from the driver (64
random bits from the OS and the wall clock in the runtime, a value per life in
the simulator), never from a seeded RNG.
"""

from __future__ import annotations

import hmac
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

TRAILER = struct.Struct(">QQq")
MAC_BYTES = 16
TRAILER_BYTES = TRAILER.size + MAC_BYTES  # 40
WINDOW_BITS = 1024
_WINDOW_MASK = (1 << WINDOW_BITS) - 1
MIN_KEY_BYTES = 16


def parse_key_file(text: str, *, source: str = "key file") -> tuple[bytes, ...]:
    """Keys, one per line, primary first (hex, or any text of at least 16 bytes);
    blank lines and ``#`` comments are ignored. Raises ``ValueError`` naming the line."""
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            key = line.encode()
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"{source}, line {number}: a key needs at least {MIN_KEY_BYTES} bytes")
        keys.append(key)
    if not keys:
        raise ValueError(f"{source}: no key found")
    return tuple(keys)


@dataclass(slots=True)
class _BootWindow:
    highest: int = -1
    seen: int = 0  # bit i set: sequence number ``highest - i`` was accepted
    last_ns: int = 0


@dataclass(slots=True)
class Guard:
    """Seals outgoing datagrams and opens incoming ones for one node."""

    keys: tuple[bytes, ...]
    boot: int
    max_age_ns: int = 30_000_000_000
    max_boots: int = 4096
    seq: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    _boots: OrderedDict[int, _BootWindow] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        assert self.keys and all(len(k) >= MIN_KEY_BYTES for k in self.keys)

    def seal(self, payload: bytes, *, now_ns: int) -> bytes:
        """``payload`` with its trailer, under the primary key."""
        self.seq += 1
        head = payload + TRAILER.pack(self.boot, self.seq, now_ns)
        return head + _mac(self.keys[0], head)

    def open(self, datagram: bytes, *, now_ns: int) -> bytes | None:
        """The payload if the datagram is authentic, fresh and new; else None (counted)."""
        if len(datagram) <= TRAILER_BYTES:
            self._drop("auth_short")
            return None
        head, mac = datagram[:-MAC_BYTES], datagram[-MAC_BYTES:]
        if not any(hmac.compare_digest(mac, _mac(key, head)) for key in self.keys):
            self._drop("auth_bad_mac")
            return None
        boot, seq, sent_ns = TRAILER.unpack_from(head, len(head) - TRAILER.size)
        if abs(now_ns - sent_ns) > self.max_age_ns:
            self._drop("auth_stale")
            return None
        if not self._accept(boot, seq, now_ns):
            self._drop("auth_replay")
            return None
        return head[: -TRAILER.size]

    def _accept(self, boot: int, seq: int, now_ns: int) -> bool:
        window = self._boots.get(boot)
        if window is None:
            self._forget_old(now_ns)
            if len(self._boots) >= self.max_boots:
                self._drop("auth_boots_full")
                return False
            window = self._boots[boot] = _BootWindow()
        self._boots.move_to_end(boot)
        window.last_ns = now_ns
        if seq > window.highest:
            shift = seq - window.highest
            # A jump past the window forgets it (shifting by a 64-bit amount would try
            # to build an astronomically large integer: found by the fuzz campaign).
            seen = (window.seen << shift) & _WINDOW_MASK if shift < WINDOW_BITS else 0
            window.seen = seen | 1
            window.highest = seq
            return True
        offset = window.highest - seq
        if offset >= WINDOW_BITS or window.seen >> offset & 1:
            return False
        window.seen |= 1 << offset
        return True

    def _forget_old(self, now_ns: int) -> None:
        """Windows idle longer than ``max_age`` can go: their datagrams are stale anyway."""
        while self._boots:
            boot, window = next(iter(self._boots.items()))
            if now_ns - window.last_ns <= 2 * self.max_age_ns:
                break
            del self._boots[boot]

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")[:MAC_BYTES]  # the one-shot C HMAC, no object


def new_guard(
    keys: Sequence[bytes],
    boot: int,
    *,
    max_age_ns: int = 30_000_000_000,
    dropped: dict[str, int] | None = None,
) -> Guard:
    """A guard for ``keys`` (primary first) and this process life's ``boot`` id; drops
    are counted by reason into ``dropped`` (the node's counter, for metrics)."""
    return Guard(tuple(keys), boot, max_age_ns, dropped={} if dropped is None else dropped)
