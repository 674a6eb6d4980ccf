"""Network addresses as values: ``(host, port)`` tuples and their text form.

Parsing only: no name is resolved here (the runtime resolves hostnames when it
sends), so the sans-IO node, the daemon's config and the public face share one
definition of what ``HOST:PORT`` means.
"""

from __future__ import annotations

#: A UDP or TCP endpoint: host (name or literal IP) and port.
Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """``HOST:PORT`` (``[::1]:7400`` for IPv6) as a tuple; ``ValueError`` if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_udp_address(text: str) -> Address:
    """An address peers are told: a real port and a host they can reach."""
    host, port = parse_address(text)
    if port == 0:
        raise ValueError(f"{text!r}: name a port; peers are told this address, so it cannot be 0")
    if host in ("0.0.0.0", "::", ""):
        raise ValueError(
            f"{text!r}: peers are told this address; bind one they can reach, not {host!r}"
        )
    return host, port
