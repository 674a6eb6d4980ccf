"""Host names to addresses, for the runtime: seeds on every join attempt, binds once.

The sans-IO node only ever sees literal IP addresses: a name handed to a peer
would poison it (uvloop refuses to send to a name, and a peer cannot resolve
ours), and a name handed to the socket crashed the daemon. So names are
resolved here, at the edge:

- seeds (``resolve_seeds``) on every join attempt, asynchronously, each name to
  *every* address it has (a Kubernetes headless service names one per pod); a
  name that does not resolve is reported and left out, and the runtime asks
  again with backoff — never an exception out of the runtime;
- a bind or advertised address (``resolve_address``) once, at start: the
  address peers are told must be an IP they can reach.

IP literals pass through untouched, without a lookup. Each lookup is bounded by
``RESOLVE_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from meshlimit.cluster.wire.addresses import Address

#: A lookup slower than this counts as failed (the join is retried later). Why 5 s:
#: a resolver's own first timeout; waiting longer only delays the next attempt.
RESOLVE_TIMEOUT_S = 5.0
#: Most addresses taken from one name. Why 64: more seeds than any cluster needs.
MAX_ADDRESSES_PER_NAME = 64


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_unspecified(host: str) -> bool:
    """``0.0.0.0``, ``::`` or empty: a bind to every interface, which peers cannot reach."""
    return host in ("", "0.0.0.0", "::")


async def lookup(host: str, port: int, family: int = socket.AF_UNSPEC) -> list[Address]:
    """Every address of ``host`` (IPv4 first), for UDP; ``OSError`` if it has none."""
    if is_ip_literal(host):
        return [(host, port)]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM),
            RESOLVE_TIMEOUT_S,
        )
    except TimeoutError:
        raise OSError(f"no answer from the resolver within {RESOLVE_TIMEOUT_S:g} s") from None
    except UnicodeError as error:  # a label too long for IDNA
        raise OSError(f"not a valid host name: {error}") from None
    found = [(str(info[4][0]), int(info[4][1])) for info in infos]
    found.sort(key=lambda addr: ":" in addr[0])  # IPv4 first: what most peers bind
    unique = list(dict.fromkeys(found))[:MAX_ADDRESSES_PER_NAME]
    if not unique:
        raise OSError("no address")
    return unique


async def resolve_seeds(
    seeds: Sequence[Address], family: int = socket.AF_UNSPEC
) -> tuple[list[Address], dict[str, str]]:
    """``(addresses, errors)``: every address of every seed (those of the socket's
    ``family`` when it is given), and for each seed that did not resolve, why."""
    results = await asyncio.gather(
        *(lookup(host, port, family) for host, port in seeds), return_exceptions=True
    )
    addresses: list[Address] = []
    errors: dict[str, str] = {}
    for (host, port), result in zip(seeds, results, strict=True):
        if isinstance(result, OSError):
            errors[format_address((host, port))] = str(result.strerror or result)
        elif isinstance(result, BaseException):
            raise result  # a bug or a cancellation, not a resolver's answer
        else:
            addresses.extend(result)
    return list(dict.fromkeys(addresses)), errors


async def resolve_address(addr: Address) -> Address:
    """The IP address to bind or advertise for ``addr`` (its first, IPv4 preferred);
    ``OSError`` naming the host if it does not resolve."""
    host, port = addr
    if is_ip_literal(host) or is_unspecified(host):
        return addr
    try:
        return (await lookup(host, port))[0]
    except OSError as error:
        raise OSError(f"cannot resolve {host!r}: {error.strerror or error}") from None


def format_address(addr: Address) -> str:
    """``HOST:PORT``, with IPv6 hosts in brackets."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
