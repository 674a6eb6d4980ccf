"""The RESP front-end for clients and Redis tooling: ``ML.RULE``, ``ML.RESET``, ``ML.CHECK
... WITHWINDOW``, and the connection commands (``resp_session.py``) that ``redis-cli``
and client libraries send: ``ECHO`` (``redis-cli --pipe`` bulk loads), ``COMMAND``,
``HELLO``, ``CLIENT``, ``SELECT``.

Each test starts a one-node runtime on a free loopback port and a RESP server on a free
TCP port (``test_resp``'s helpers), and talks to it with redis-py, raw sockets and the
real ``redis-cli`` (skipped when it is not installed; Debian's ``redis-tools`` has it).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
import redis.asyncio as aioredis
import test_resp as base
from redis.exceptions import ResponseError

from meshlimit.cluster.daemon.resp import RespServer
from meshlimit.cluster.runtime import Runtime
from meshlimit.core.rules import parse_rule

pytestmark = pytest.mark.loopback

DAY_MS = 86_400_000
needs_redis_cli = pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli not installed (Debian: redis-tools)"
)


def resp(*args: bytes | str) -> bytes:
    """One command in RESP, as ``redis-cli --pipe`` reads it."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


async def redis_cli(server: RespServer, *args: str, stdin: bytes | None = None) -> str:
    host, port = server.address
    proc = await asyncio.create_subprocess_exec(
        "redis-cli",
        "-h",
        host,
        "-p",
        str(port),
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode()


def test_ml_rule_set_get_del_and_reset() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        call = client.execute_command
        assert await call("ML.RULE", "GET", "acme") == [b"3/day", b"default"]
        assert await call("ML.RULE", "SET", "acme", "2/second;5/day") == b"OK"
        assert await call("ML.RULE", "GET", "acme") == [b"2/second;5/day", b"client"]
        assert runtime.node.rule_for("acme") == parse_rule("2/second;5/day")
        # The multi-limit rule holds: two a second, and the reply names the limit.
        first = await call("ML.CHECK", "acme", "WITHWINDOW")
        assert first == [1, 2, 1, first[3], 0, b"owner", 1000]
        assert (await call("ML.CHECK", "acme", 1, "withwindow"))[:3] == [1, 2, 0]
        refused = await call("ML.CHECK", "acme", 1, "WITHWINDOW")
        assert refused[0] == 0 and refused[6] == 1000
        # ML.RESET forgets the counts: the client starts afresh.
        assert await call("ML.RESET", "acme") == b"OK"
        assert (await call("ML.CHECK", "acme"))[:3] == [1, 2, 1]
        # Tiers: a known one is accepted and reported as the source; a typo is refused.
        runtime.set_rule("tier:gold", parse_rule("9/day"))
        assert await call("ML.RULE", "SET", "acme", "@gold") == b"OK"
        assert await call("ML.RULE", "GET", "acme") == [b"9/day", b"tier:gold"]
        with pytest.raises(ResponseError, match="no tier 'glod'"):
            await call("ML.RULE", "SET", "acme", "@glod")
        assert await call("ML.RULE", "DEL", "acme") == 1
        assert await call("ML.RULE", "DEL", "acme") == 0
        assert await call("ML.RULE", "GET", "acme") == [b"3/day", b"default"]
        # The six-element reply is unchanged for older clients; the window is the rule's.
        assert len(await call("ML.CHECK", "other")) == 6
        assert (await call("ML.CHECK", "other", "WITHWINDOW"))[6] == DAY_MS
        bad = {
            ("ML.RULE", "SET", "acme", "10/fortnight"): "'fortnight'",
            ("ML.RULE", "SET", "acme", "1/s;2/s"): "same window",
            ("ML.RULE", "PUT", "acme", "1/s"): "syntax error: ML.RULE",
            ("ML.RULE", "GET", "acme", "x"): "syntax error",
            ("ML.RULE", "SET", "cl.throttle:k", "1/s"): "CL.THROTTLE's keys",
            ("ML.RULE", "SET", "acme", "@bad tier"): "tier name",
            ("ML.RESET",): "wrong number of arguments for 'ml.reset'",
            ("ML.CHECK", "acme", "1", "2"): "wrong number of arguments for 'ml.check'",
        }
        for command, message in bad.items():
            with pytest.raises(ResponseError, match=message):
                await call(*command)
        assert await client.ping() is True  # every error left the connection up

    base.run(scenario)


def test_connection_commands_answer_as_redis_does() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        call = client.execute_command
        assert await call("ECHO", "hello there") == b"hello there"
        assert await call("SELECT", 0) in (True, b"OK")  # redis-py may read +OK as True
        with pytest.raises(ResponseError, match="DB index is out of range"):
            await call("SELECT", 1)
        assert await call("CLIENT", "GETNAME") is None
        assert await call("CLIENT", "SETNAME", "worker-1") in (True, b"OK")
        assert await call("CLIENT", "GETNAME") in ("worker-1", b"worker-1")
        with pytest.raises(ResponseError, match="cannot contain spaces"):
            await call("CLIENT", "SETNAME", "two words")
        ident = await call("CLIENT", "ID")
        assert isinstance(ident, int) and ident >= 1
        # COMMAND: the table, its size, one entry (Redis's arity, flags, key positions).
        # (raw: redis-py reads every COMMAND reply as the full table)
        answer = await base.raw_exchange(server, resp("COMMAND", "COUNT") + resp("COMMAND", "LIST"))
        count_line, listing = answer.split(b"\r\n", 1)
        count = int(count_line[1:])
        names = set(listing.split(b"\r\n")[2::2])
        assert listing.startswith(b"*%d\r\n" % count) and len(names) == count
        assert {b"ml.check", b"ml.rule", b"ml.reset", b"echo", b"quit", b"command"} <= names
        info = await base.raw_exchange(server, resp("COMMAND", "INFO", "ml.check", "nope"))
        entry = b"*10\r\n$8\r\nml.check\r\n:-2\r\n*2\r\n+write\r\n+fast\r\n:1\r\n:1\r\n:1\r\n"
        assert info == b"*2\r\n" + entry + b"*0\r\n" * 4 + b"*-1\r\n"
        table = await base.raw_exchange(server, resp("COMMAND") + resp("COMMAND", "DOCS"))
        assert table.startswith(b"*%d\r\n*10\r\n" % count) and table.endswith(b"*0\r\n")
        assert table.count(b"*10\r\n") == count
        # HELLO 2 on a fresh connection: a flat array naming this connection's id and
        # name; 3 a map; anything else NOPROTO, as Redis answers it.
        hello = resp("HELLO", "2", "SETNAME", "cli") + resp("CLIENT", "GETNAME")
        hello += resp("HELLO", "4") + resp("HELLO", "x")
        answer = await base.raw_exchange(server, hello)
        assert answer.startswith(b"*14\r\n$6\r\nserver\r\n$9\r\nmeshlimit\r\n")
        assert b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:" in answer
        assert b"$3\r\ncli\r\n-NOPROTO sorry" in answer  # GETNAME, then HELLO 4
        assert answer.endswith(b"-ERR Protocol version is not an integer or out of range\r\n")
        # Under RESP3 a missing name is RESP3's null.
        answer = await base.raw_exchange(server, resp("HELLO", "3") + resp("CLIENT", "GETNAME"))
        assert answer.startswith(b"%7\r\n") and answer.endswith(b"_\r\n")

    base.run(scenario)


@needs_redis_cli
def test_redis_cli_pipe_bulk_loads_rules() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        clients = 500
        load = b"".join(
            resp("ML.RULE", "SET", f"tenant-{n}", f"{n + 1}/minute;{10 * (n + 1)}/day")
            for n in range(clients)
        )
        load += resp("ML.RULE", "SET", "broken", "1/fortnight")  # counted as an error
        out = await redis_cli(server, "--pipe", stdin=load)
        assert "errors: 1, replies: 501" in out, out
        assert runtime.node.rule_for("tenant-41") == parse_rule("42/minute;420/day")
        assert runtime.node.registry.entry_count() == 1 + clients  # the default and the load

    base.run(scenario)


@needs_redis_cli
def test_redis_cli_commands_and_database_zero() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        assert await redis_cli(server, "-n", "0", "ML.RULE", "SET", "cli", "1/day") == "OK\n"
        lines = (await redis_cli(server, "ML.CHECK", "cli", "1", "WITHWINDOW")).split()
        assert lines == ["1", "1", "0", lines[3], "0", "owner", str(DAY_MS)]
        assert (await redis_cli(server, "ML.RULE", "GET", "cli")).split() == ["1/day", "client"]
        assert (await redis_cli(server, "ML.RESET", "cli")).strip() == "OK"
        assert (await redis_cli(server, "ECHO", "hi")).strip() == "hi"
        assert int(await redis_cli(server, "COMMAND", "COUNT")) >= 10
        assert "out of range" in await redis_cli(server, "-n", "3", "PING")

    base.run(scenario)


def test_inline_commands_and_empty_lines_between_frames() -> None:
    async def scenario(client: aioredis.Redis, server: RespServer, runtime: Runtime) -> None:
        ping = resp("PING")
        cases = {
            # redis-cli --pipe's ending: an empty line, then the ECHO it waits for
            ping + b"\r\n" + resp("ECHO", "end"): b"+PONG\r\n$3\r\nend\r\n",
            b"\n\r\n" + ping: b"+PONG\r\n",
            b"PING\r\nECHO  two\t\r\n" + ping + b"ML.CHECK  acme 1\n": b"+PONG\r\n$3\r\ntwo\r\n"
            + b"+PONG\r\n*6\r\n:1\r\n:3\r\n:2\r\n",
            b"nope a b\r\n": b"-ERR unknown command 'nope'",
        }
        for payload, expected in cases.items():
            answer = await base.raw_exchange(server, payload)
            assert answer.startswith(expected), (payload, answer)
        # Split anywhere, the same answers.
        payload = b"ECHO split\r\n\r\n" + ping
        reader, writer = await asyncio.open_connection(*server.address)
        try:
            for byte in payload:
                writer.write(bytes([byte]))
                await writer.drain()
            expected = b"$5\r\nsplit\r\n+PONG\r\n"
            assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
        finally:
            writer.close()
        # A line is bounded like a frame: past it, a protocol error and the close.
        answer = await base.raw_exchange(server, b"PING " + b"x" * 70_000)
        assert answer.startswith(b"-ERR Protocol error: command larger than")
        assert server.stats["protocol_errors"] == 1

    base.run(scenario)
