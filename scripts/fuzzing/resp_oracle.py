"""The RESP target's oracle: the bytes go to one connection of a real ``RespServer`` (a
fake transport, a fake runtime whose checks are deterministic, some decided later by the
loop as forwarded ones are), whole and again in small chunks on a fresh server, and both
feeds must give the same replies with nothing escaping."""

from __future__ import annotations

import re
import zlib
from typing import Any

from fuzzing.common import T0, Finding


class _FakeTransport:
    """Records writes; pausing, closing and connection_lost as asyncio's transports do."""

    def __init__(self, loop: Any, protocol: Any) -> None:
        self.loop = loop
        self.protocol = protocol
        self.written = bytearray()
        self.paused = False
        self.closing = False
        self.writes_after_close = 0

    def write(self, data: bytes) -> None:
        if self.closing:
            self.writes_after_close += 1
            return
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._lost)

    def _lost(self) -> None:
        # As asyncio's transports do: once told, the protocol is let go, so the
        # connection (and its reader's buffers) is freed now, not by a later GC pass.
        protocol, self.protocol = self.protocol, None
        protocol.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _FakeRuntime:
    """Checks decided from the client's hash alone, a quarter of them later by the loop (as
    forwarded checks are), some refused by the node's last word; rules go to a real engine."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from meshlimit.core.engine import Engine

        self.engine = Engine("10/minute")
        self.node = SimpleNamespace(registry=self.engine.registry)
        self.stamp = 0

    def set_rule(self, key: str, value: Any) -> bool:
        from meshlimit.core.hlc import Stamp

        self.stamp += 1
        return self.engine.apply_rule(key, value, Stamp(T0 // 10**6, self.stamp, "a"))

    async def check(self, client: str, cost: int = 1) -> Any:
        import asyncio

        from meshlimit.core.decision import make_decision
        from meshlimit.core.registry import check_client_id

        check_client_id(client)
        h = zlib.crc32(client.encode())
        # The rule as of the call: a pipelined CL.THROTTLE of the same key with other
        # arguments may rewrite it before a delayed check resumes, and which one wins
        # then depends on timing (documented: last writer wins), not on the parser.
        rule = self.engine.registry.resolve(client)
        if h % 4 == 0:
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.set_result, None)
            await future
        if h % 11 == 0:
            raise ValueError(f"client {client!r} refused by the node")
        limit = 0 if h % 13 == 0 else rule.limit  # an owner with another rule (no rule has 0)
        allowed = (h + cost) % 3 != 0
        retry_ns = -1 if cost > rule.capacity else (h % 5000) * 1_000_000
        return make_decision(
            allowed,
            limit,
            h % (limit + 1),
            (h % 60_000) * 10**6,
            retry_ns,
            "forwarded" if h % 4 == 0 else "owner",
        )


_RESP_STATE: dict[str, Any] = {}


def _resp_setup() -> None:
    import asyncio
    import logging

    loop = asyncio.new_event_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    logged: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record)

    resp_log = logging.getLogger("meshlimit.resp")
    resp_log.addHandler(Recorder(logging.ERROR))
    resp_log.propagate = False
    _RESP_STATE.update(loop=loop, loop_errors=loop_errors, logged=logged)


def _resp_feed(chunks: list[bytes]) -> bytes:
    """Run one connection over ``chunks`` on a fresh server; its output bytes."""
    import asyncio

    import meshlimit.cluster.daemon.resp as resp

    config = resp.RespConfig(
        max_frame_bytes=512,
        max_args=8,
        max_pipeline=4,
        throttle_registry_share=16,
        rule_spread_wait_s=0.0,
    )  # small bounds, so that fuzz inputs reach them
    server = resp.RespServer(_FakeRuntime(), config)  # type: ignore[arg-type]

    async def session() -> bytes:
        connection = resp._Connection(server)
        transport = _FakeTransport(asyncio.get_running_loop(), connection)
        connection.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            for _ in range(100):  # asyncio delivers nothing while reading is paused
                if not transport.paused or transport.closing:
                    break
                await asyncio.sleep(0)
            if transport.closing:
                break
            if transport.paused:
                raise Finding("reading stayed paused while every reply could be sent")
            connection.data_received(chunk)
        if not transport.closing:
            connection.eof_received()
        for _ in range(100):
            if transport.closing:
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # connection_lost
        if not transport.closing:
            raise Finding("the connection stayed open after EOF with every reply decided")
        if transport.writes_after_close:
            raise Finding(f"{transport.writes_after_close} writes after close")
        return bytes(transport.written)

    loop = _RESP_STATE["loop"]
    try:
        out = loop.run_until_complete(session())
    finally:  # also after a finding: the next input must start on an idle loop
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
    if leftover:
        raise Finding(f"{len(leftover)} tasks still running after the connection closed")
    return out


_PROTOCOL_ERROR = re.compile(rb"-ERR Protocol error[^\r\n]*\r\n")


def run_resp(data: bytes) -> None:
    if not _RESP_STATE:
        _resp_setup()
    loop_errors, logged = _RESP_STATE["loop_errors"], _RESP_STATE["logged"]
    loop_errors.clear()
    logged.clear()
    whole = _resp_feed([data])
    size = 1 + zlib.crc32(data) % 7
    chunked = _resp_feed([data[i : i + size] for i in range(0, len(data), size)])
    if loop_errors:
        context = loop_errors[0]
        error = context.get("exception")
        if error is not None:
            raise Finding(f"the loop's handler got: {context.get('message')}") from error
        raise Finding(f"the loop's handler got: {context}")
    if logged:
        record = logged[0]
        raise Finding(f"logged: {record.getMessage()}\n{record.exc_text or ''}")
    if b"internal error" in whole or b"internal error" in chunked:
        raise Finding("a reply says internal error")
    a, b = (
        _PROTOCOL_ERROR.sub(b"-PROTOCOL\r\n", whole),
        _PROTOCOL_ERROR.sub(b"-PROTOCOL\r\n", chunked),
    )
    if a != b:
        raise Finding(
            f"replies depend on how the bytes arrive ({size}-byte chunks):\n"
            f"whole:   {whole[:400]!r}\nchunked: {chunked[:400]!r}"
        )
