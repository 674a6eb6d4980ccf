"""The RESP commands about the connection and the server, which Redis tooling relies on.

Redis clients and tools send these around the commands they are used for: ``HELLO`` and
``CLIENT SETNAME``/``SETINFO`` when connecting (redis-py, go-redis), ``SELECT`` for
``redis-cli -n``, ``ECHO`` at the end of ``redis-cli --pipe`` (it waits for the echo
to know every reply is in), ``COMMAND`` and ``COMMAND DOCS`` for command tables and
hints. Each is answered as Redis answers it, within what this front-end is:

- ``HELLO [2|3] [SETNAME name]``: the server's description (a flat array under 2, a
  map under 3). Every reply the limiter commands send is the same in RESP2 and RESP3,
  so both are accepted (redis-py 8 and go-redis open with ``HELLO 3``); the
  connection's protocol decides only how a null is written (``CLIENT GETNAME``).
  Another version is ``-NOPROTO``; ``AUTH`` is refused: the front-end has no users.
- ``CLIENT SETNAME name`` (no spaces or line breaks, as Redis), ``CLIENT GETNAME``
  (null before a name is set), ``CLIENT ID``, ``CLIENT SETINFO attr value`` (``+OK``,
  ignored).
- ``ECHO message``; ``SELECT 0`` (the only database: another index is an error).
- ``COMMAND``, ``COMMAND COUNT``, ``COMMAND LIST``, ``COMMAND INFO name...`` (Redis 7's
  ten-field entries: name, arity, flags, first/last key and step, then empty ACL
  categories, tips, key specs and subcommands) and ``COMMAND DOCS [name...]`` (an
  empty answer: tools fall back to their own help).

``QUIT`` belongs to the connection (``resp.py``). State per connection is a
:class:`Session`: its id, name and protocol, nothing else.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshlimit.cluster.daemon.resp_protocol import OK, encode_bulk, show

try:
    _VERSION = importlib.metadata.version("meshlimit").encode()
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare tree
    _VERSION = b"0"

#: The longest client name kept (Redis has no bound; a name is only echoed back).
MAX_NAME_BYTES = 256


class CommandError(ValueError):
    """A client's mistake in one command: answered with ``-CODE message``, the connection lives."""

    def __init__(self, message: str, code: str = "ERR") -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Session:
    """What one connection has told the server about itself."""

    id: int
    name: bytes = b""
    proto: int = 2


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """One command's entry in ``COMMAND``: Redis's arity (negative: at least that many,
    the name included), flags, and where its key is (0: none)."""

    name: bytes
    arity: int
    flags: tuple[bytes, ...]
    first_key: int = 0


def command_info(info: CommandInfo) -> bytes:
    """The ten-field ``COMMAND`` entry of a command."""
    last, step = (info.first_key, 1) if info.first_key else (0, 0)
    flags = b"*%d\r\n" % len(info.flags) + b"".join(b"+%b\r\n" % f for f in info.flags)
    return (
        b"*10\r\n"
        + encode_bulk(info.name.lower())
        + b":%d\r\n%b:%d\r\n:%d\r\n:%d\r\n" % (info.arity, flags, info.first_key, last, step)
        + b"*0\r\n" * 4
    )


class SessionCommands:
    """Answers the connection and server commands; ``infos`` lists every command served."""

    def __init__(self, infos: Callable[[], Sequence[CommandInfo]]) -> None:
        self._infos = infos
        self.handlers: dict[bytes, tuple[Callable[[list[bytes], Session], bytes], int, int]] = {
            b"HELLO": (self._hello, 1, 6),
            b"CLIENT": (self._client, 2, 4),
            b"ECHO": (self._echo, 2, 2),
            b"SELECT": (self._select, 2, 2),
            b"COMMAND": (self._command, 1, 64),
        }

    def infos(self) -> list[CommandInfo]:
        """This module's own commands' entries."""
        return [
            CommandInfo(b"HELLO", -1, (b"noscript", b"loading", b"stale", b"fast")),
            CommandInfo(b"CLIENT", -2, (b"noscript", b"loading", b"stale")),
            CommandInfo(b"ECHO", 2, (b"fast",)),
            CommandInfo(b"SELECT", 2, (b"loading", b"stale", b"fast")),
            CommandInfo(b"COMMAND", -1, (b"loading", b"stale")),
        ]

    def _hello(self, args: list[bytes], session: Session) -> bytes:
        """``HELLO [protover [AUTH user pass] [SETNAME name]]``: the server's description."""
        version = session.proto if len(args) == 1 else _protocol(args[1])
        options = [a.upper() for a in args[2:]]
        if b"AUTH" in options:
            raise CommandError("AUTH is not supported: this front-end has no users")
        if len(args) not in (1, 2, 4) or (options and options[0] != b"SETNAME"):
            raise CommandError("syntax error: HELLO [2|3] [SETNAME name]")
        if len(args) == 4:
            session.name = _client_name(args[3])
        session.proto = version
        fields = [
            (b"server", encode_bulk(b"meshlimit")),
            (b"version", encode_bulk(_VERSION)),
            (b"proto", b":%d\r\n" % version),
            (b"id", b":%d\r\n" % session.id),
            (b"mode", encode_bulk(b"standalone")),
            (b"role", encode_bulk(b"master")),
            (b"modules", b"*0\r\n"),
        ]
        head = b"%%%d\r\n" % len(fields) if version == 3 else b"*%d\r\n" % (2 * len(fields))
        return head + b"".join(encode_bulk(name) + value for name, value in fields)

    def _client(self, args: list[bytes], session: Session) -> bytes:
        sub = args[1].upper()
        if sub == b"SETNAME" and len(args) == 3:
            session.name = _client_name(args[2])
            return OK
        if sub == b"GETNAME" and len(args) == 2:
            if session.name:
                return encode_bulk(session.name)
            return b"_\r\n" if session.proto == 3 else b"$-1\r\n"
        if sub == b"ID" and len(args) == 2:
            return b":%d\r\n" % session.id
        if sub == b"SETINFO" and len(args) == 4:
            return OK  # accepted and ignored: nothing here shows library names
        raise CommandError(f"unknown subcommand or wrong arguments for 'client|{show(args[1])}'")

    def _echo(self, args: list[bytes], session: Session) -> bytes:
        return encode_bulk(args[1])

    def _select(self, args: list[bytes], session: Session) -> bytes:
        if args[1] != b"0":
            raise CommandError("DB index is out of range (this server has database 0 only)")
        return OK

    def _command(self, args: list[bytes], session: Session) -> bytes:
        infos = {info.name: info for info in self._infos()}
        sub = args[1].upper() if len(args) > 1 else b""
        if not sub:
            return b"*%d\r\n" % len(infos) + b"".join(map(command_info, infos.values()))
        if sub == b"COUNT" and len(args) == 2:
            return b":%d\r\n" % len(infos)
        if sub == b"LIST" and len(args) == 2:
            names = [encode_bulk(name.lower()) for name in infos]
            return b"*%d\r\n" % len(names) + b"".join(names)
        if sub == b"INFO":
            found = [infos.get(name.upper()) for name in args[2:]]
            entries = [b"*-1\r\n" if i is None else command_info(i) for i in found]
            return b"*%d\r\n" % len(entries) + b"".join(entries)
        if sub == b"DOCS":
            return b"*0\r\n"  # no docs: redis-cli falls back to its own hints
        raise CommandError(f"unknown subcommand or wrong arguments for 'command|{show(args[1])}'")


def _protocol(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 10:
        raise CommandError("Protocol version is not an integer or out of range")
    if int(raw) not in (2, 3):
        raise CommandError("sorry, this protocol version is not supported", "NOPROTO")
    return int(raw)


def _client_name(raw: bytes) -> bytes:
    """A name as Redis accepts one: printable ASCII without spaces, bounded here."""
    if len(raw) > MAX_NAME_BYTES:
        raise CommandError(f"client name longer than {MAX_NAME_BYTES} bytes")
    if any(byte <= 32 or byte >= 127 for byte in raw):
        raise CommandError("Client names cannot contain spaces, newlines or special characters.")
    return raw
