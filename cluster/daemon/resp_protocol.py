"""RESP on the wire: commands read from a byte stream within a bound, replies encoded.

Theory of operation. A client sends commands as RESP arrays of bulk strings
(``*2\\r\\n$4\\r\\nPING\\r\\n$2\\r\\nhi\\r\\n``), any number of them in one read
(pipelining), any one of them split across reads. :class:`CommandReader` feeds
what a connection reads to a hiredis ``Reader`` and hands out complete commands
one at a time; anything but an array of bulk strings, and any command frame
larger than ``max_frame_bytes``, is a :class:`ProtocolError`, after which the
connection answers what came before and closes (as Redis does).

hiredis' ``maxbuf`` only sets when the reader frees an idle buffer; it is no
bound. The frame bound is kept here: the bytes fed minus the exact encoded
size of each command parsed (hiredis refuses non-canonical lengths, so the
size of a parsed command is known) are the bytes of the one incomplete frame.

Inline commands. Between frames Redis also takes a plain line, ``PING\r\n``
(telnet, ``nc``), and skips an empty one: ``redis-cli --pipe`` ends its bulk load
with ``\r\n`` before the ``ECHO`` it waits for. hiredis reads replies, not
commands, and refuses both, so the reader keeps the bytes not yet parsed (one
copy, compacted on every feed) and looks at the first byte of each frame: ``*``
goes to hiredis, anything else is a line, split on white space here (no quoting;
an empty one skipped), as Redis decides it. A line is bounded like a frame.

Replies are encoded by the small functions below; every reply this server
sends is the same in RESP2 and RESP3 (integers, arrays, bulk and simple
strings, errors).
"""

from __future__ import annotations

import hiredis

_NEED_MORE = object()  # hiredis' "no complete reply yet": False would be RESP3's #f


class ProtocolError(ValueError):
    """Garbage from the client, or a frame over the bound: answered, then the connection
    closes. ``oversized`` tells the frame bound apart, for the counters."""

    def __init__(self, message: str, *, oversized: bool = False) -> None:
        super().__init__(message)
        self.oversized = oversized


class CommandReader:
    """Splits one connection's bytes into commands, no frame larger than ``max_frame_bytes``."""

    __slots__ = ("_reader", "max_frame_bytes", "partial_bytes", "_unparsed", "_inline")

    def __init__(self, max_frame_bytes: int) -> None:
        self._reader = hiredis.Reader(notEnoughData=_NEED_MORE)
        self.max_frame_bytes = max_frame_bytes
        self.partial_bytes = 0
        """Bytes fed that no complete command has accounted for yet."""
        self._unparsed = bytearray()  # ends with those bytes (its front is compacted away)
        self._inline = False  # True: hiredis holds nothing; the next frame is a line

    def feed(self, data: bytes) -> None:
        """Take bytes as they were read (any split of the stream)."""
        unparsed = self._unparsed
        consumed = len(unparsed) - self.partial_bytes
        if consumed:
            del unparsed[:consumed]
        unparsed += data
        at_boundary = self.partial_bytes == 0
        self.partial_bytes += len(data)
        if self._inline:
            return
        if at_boundary and data[:1] != b"*":  # a line, not a frame: read it here
            self._inline = True
            return
        self._reader.feed(data)

    def next_command(self) -> list[bytes] | None:
        """The next complete command, or None until more bytes come; a
        :class:`ProtocolError` for garbage or a frame over the bound. Empty
        arrays and empty lines are skipped: they are no command (Redis skips
        them too)."""
        while True:
            if self._inline:
                line = self._next_line()
                if line is None:
                    return None
                if line:
                    return line
                continue
            try:
                frame = self._reader.gets()
            except (hiredis.HiredisError, TypeError, ValueError, MemoryError) as error:
                raise _garbage(error) from None
            if frame is _NEED_MORE:
                if self.partial_bytes > self.max_frame_bytes:
                    raise self._oversized()
                return None
            size = command_size(frame)
            if size is None:
                raise ProtocolError("Protocol error: expected an array of bulk strings")
            self.partial_bytes -= size
            if size > self.max_frame_bytes:
                raise self._oversized()
            self._after_frame()
            if frame:
                command: list[bytes] = frame  # command_size checked it: a list of bytes
                return command

    def commands(self) -> tuple[list[list[bytes]], ProtocolError | None]:
        """Every complete command fed so far, in order (as :meth:`next_command` hands them
        out one at a time), and the :class:`ProtocolError` that stopped the reading, if
        any: the commands before it are to be answered first."""
        commands: list[list[bytes]] = []
        try:
            if self._inline or self._frames(commands):
                while (command := self.next_command()) is not None:
                    commands.append(command)
        except ProtocolError as error:
            return commands, error
        return commands, None

    def _frames(self, commands: list[list[bytes]]) -> bool:
        """:meth:`next_command`'s loop over frames, in one frame for a pipelined read: True
        when a line follows (the rest is :meth:`next_command`'s), False when the bytes fed
        hold no further complete frame."""
        gets = self._reader.gets
        unparsed = self._unparsed
        limit = self.max_frame_bytes
        partial = self.partial_bytes
        try:
            while True:
                try:
                    frame = gets()
                except (hiredis.HiredisError, TypeError, ValueError, MemoryError) as error:
                    raise _garbage(error) from None
                if frame is _NEED_MORE:
                    if partial > limit:
                        raise self._oversized()
                    return False
                size = command_size(frame)
                if size is None:
                    raise ProtocolError("Protocol error: expected an array of bulk strings")
                partial -= size
                if size > limit:
                    raise self._oversized()
                if frame:
                    commands.append(frame)
                if partial and unparsed[-partial] != 42:  # b"*": a line follows
                    self._reader = hiredis.Reader(notEnoughData=_NEED_MORE)
                    self._inline = True
                    return True
        finally:
            self.partial_bytes = partial

    def _after_frame(self) -> None:
        """At a frame's end: if the bytes after it start with no ``*``, they are a line,
        read here; hiredis (which holds them) is replaced by a fresh reader."""
        if self.partial_bytes and self._unparsed[-self.partial_bytes] != ord("*"):
            self._reader = hiredis.Reader(notEnoughData=_NEED_MORE)
            self._inline = True

    def _next_line(self) -> list[bytes] | None:
        """The next inline command (``[]``: an empty line), or None until its end comes;
        back to hiredis at the next ``*``."""
        unparsed = self._unparsed
        start = len(unparsed) - self.partial_bytes
        end = unparsed.find(b"\n", start)
        if end < 0:
            if self.partial_bytes > self.max_frame_bytes:
                raise self._oversized()
            return None
        if end - start > self.max_frame_bytes:
            raise self._oversized()
        words = bytes(unparsed[start:end]).split()
        self.partial_bytes -= end + 1 - start
        if self.partial_bytes == 0:
            self._inline = False  # the next bytes fed decide
        elif unparsed[end + 1] == ord("*"):
            self._inline = False
            self._reader.feed(bytes(unparsed[end + 1 :]))
        return words

    def _oversized(self) -> ProtocolError:
        limit = self.max_frame_bytes
        return ProtocolError(f"Protocol error: command larger than {limit} bytes", oversized=True)


def _garbage(error: Exception) -> ProtocolError:
    """hiredis' complaint as a protocol error. TypeError: a RESP3 map whose key is an array
    (found by the fuzz campaign); MemoryError: an absurd declared size. Both are garbage."""
    text = str(error)  # hiredis' own messages start "Protocol error"
    return ProtocolError(text if text.startswith("Protocol error") else f"Protocol error: {text}")


def command_size(frame: object) -> int | None:
    """The encoded size of a command, an array of bulk strings; None for anything else."""
    if type(frame) is not list:
        return None
    n = len(frame)
    size = _HEAD_BYTES[n] if n < _TABLED else len(b"*%d\r\n" % n)
    for arg in frame:
        if type(arg) is not bytes:
            return None
        n = len(arg)
        size += (_HEAD_BYTES[n] if n < _TABLED else len(b"$%d\r\n" % n)) + n + 2
    return size


#: ``len(b"$%d\r\n" % n)`` (an array's ``*`` header is as long) for the lengths of nearly
#: every argument, looked up instead of formatted: this runs for every command read.
_TABLED = 1000
_HEAD_BYTES = tuple(len(b"$%d\r\n" % n) for n in range(_TABLED))


# --- encoding replies -----------------------------------------------------------------

OK = b"+OK\r\n"


def encode_error(message: str, code: str = "ERR") -> bytes:
    """``-CODE message``; line breaks in the message are flattened (they would end the reply)."""
    text = f"{code} {message}".replace("\r", " ").replace("\n", " ")
    return b"-" + text.encode("utf-8", "backslashreplace") + b"\r\n"


def encode_bulk(data: bytes) -> bytes:
    """A bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def encode_integers(values: list[int]) -> bytes:
    """An array of integers."""
    return b"*%d\r\n" % len(values) + b"".join(b":%d\r\n" % v for v in values)


def show(raw: bytes, limit: int = 40) -> str:
    """An argument as it may appear inside an error: short, printable, one line."""
    text = raw[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + ("..." if len(raw) > limit else "")
