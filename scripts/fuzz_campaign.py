#!/usr/bin/env python3
"""A coverage-guided fuzz campaign over every parser a peer or a caller can reach.

    .venv/bin/pip install atheris      # once: not a project dependency
    .venv/bin/python scripts/fuzz_campaign.py [--target NAME|all] [--seconds N] [--out DIR]
    .venv/bin/python scripts/fuzz_campaign.py --reproduce TARGET FILE

Method (the output header says it again):

- Engine: atheris (libFuzzer for Python). Only ``meshlimit`` modules are
  instrumented, plus the codec's decoders, which are generated at run time
  (``cluster/wire/codec.py``) and so escape the import hook; ``cov``/``ft`` below
  are libFuzzer's edge and feature counts over that code.
- Isolation: each target fuzzes in its own subprocess (atheris takes the
  process over); a child that dies (hard crash, OOM, timeout) is restarted
  with the time left and the corpus it grew, at most 20 times. A child's
  address space is capped at 4 GiB, so an input that makes the code allocate
  gigabytes fails at once with ``MemoryError`` (a finding) instead of timing out.
- Seeds: valid inputs written to ``OUT/TARGET/corpus`` first: encoded
  envelopes of every message type (from ``codec.encode``), rule strings, RESP
  commands, sealed datagrams, JSON bodies. The msgpack targets (codec, node)
  also get a structure-aware mutator: half of the mutations unpack the
  datagram, change one value (boundary ints, bound-length strings, a subtree
  from another seed, a type swap) and repack it; the other half are
  libFuzzer's byte mutations.
- Oracles, per target (anything else that escapes is a finding too):

  codec  ``decode(data)`` raises only ``DecodeError``, never reason
         ``internal`` (the safety net caught a bug), and what it returns
         re-encodes to an equal envelope.
  rules  ``parse_rule(data.decode("utf-8", "replace"))`` raises only
         ``ValueError``; a parsed rule's ``str`` parses back to an equal rule.
  resp   The bytes go to ``_Connection.data_received`` (a fake transport and
         a fake runtime whose checks are deterministic, some decided later
         by the loop as forwarded ones are), whole and again in small chunks
         on a fresh server: no exception may escape a callback or reach the
         loop's handler, no ``-ERR internal error``, the connection closes
         after EOF, and both feeds give the same replies (protocol errors
         compared by kind: which bound is seen first may differ).
  auth   ``Guard.open`` on up to 8 datagrams (raw bytes, or sealed under a
         keyring key with fuzzer-chosen boot, seq and clocks) returns None or
         bytes, never raises, and never accepts the same datagram twice while
         time goes forward.
  node   A sans-IO ``Node`` (``sim`` preset, ``a``) receives the datagrams
         (split on ``SEP``) from ``("b", 1)``, checks a few clients and ticks
         after each one: nothing escapes, the node swallows no error other
         than ``ValueError`` in its dispatch (a ``TypeError`` there is
         garbage the decoder let through), and every datagram it sends
         decodes.
  http   The JSON body validation of ``cluster/daemon/http_api.py`` (``_json_object``
         on a fake request, ``_refuse_unknown``, ``_client``, ``_cost``,
         ``_rule_value``), then the node call and the JSON answer, as the
         check and put-rule handlers do: only ``BadRequest`` (a 400) or the
         node's ``ValueError`` (turned into one) may come out.

- Findings: each distinct one (exception type and the innermost frame in
  meshlimit) is written once to ``OUT/TARGET/findings/`` as ``ID.txt`` (the
  traceback, the input in hex, how often it recurred) and ``ID.bin``; the
  campaign goes on after a finding. ``--reproduce TARGET FILE`` runs one input
  through the same harness without atheris and prints what it finds.

This is a script, not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

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


class Finding(Exception):
    """An oracle failed: a bug in meshlimit, or in this harness."""


# --- seeds ------------------------------------------------------------------------------


def _envelopes() -> list[Any]:
    """One valid envelope per message type and a few mixed ones, from ``("b", 1)``."""
    import meshlimit.cluster.wire.messages as m

    addr = ("b", 1)
    member = m.MemberUpdate("c", ("c", 3), m.MemberState.ALIVE, 2)
    slot = m.CounterSlot("c1", "sliding_window:60000000000", T0 // 60_000_000_000, (("b", 3),))
    tat = m.CounterSlot("c2", "token_bucket:1000000000", T0 + 10**9, ())
    entry = m.RuleEntry("client:c1", "5/minute", (T0 // 1_000_000, 0, "b"))
    single = [
        m.Ping(7, "a", T0),
        m.Ack(7, T0, T0 + 1),
        m.PingReq(8, "c", ("c", 3)),
        m.IndirectAck(8, "c"),
        member,
        m.Join("b", addr, 1),
        m.JoinReply((member, m.MemberUpdate("b", addr, m.MemberState.SUSPECT, 1))),
        m.CheckBatch(((1, "c1", 1), (2, "c2", 0), (3, "x" * 256, 2**32 - 1))),
        m.ReplyBatch(
            (m.CheckResult(1, True, 10, 9, 60_000, 0), m.CheckResult(2, False, 10, 0, 1_000, -1))
        ),
        m.CounterDeltas((slot, tat)),
        m.RuleEntries(
            (
                entry,
                m.RuleEntry("tier:gold", "100/s burst 5", (T0 // 10**6, 1, "b")),
                m.RuleEntry("client:c2", "@gold", (T0 // 10**6, 2, "b")),
                m.RuleEntry("reset:c1", None, (T0 // 10**6, 3, "b")),
            )
        ),
        m.RuleDigest(12345, 3, True),
    ]
    envelopes = [m.Envelope("b", addr, (msg,)) for msg in single]
    envelopes.append(m.Envelope("b", addr, tuple(single[:6])))
    envelopes.append(m.Envelope("b", addr, ()))
    return envelopes


def _seeds_codec() -> list[bytes]:
    import meshlimit.cluster.wire.codec as codec

    return [codec.encode(env) for env in _envelopes()]


def _seeds_node() -> list[bytes]:
    import meshlimit.cluster.wire.codec as codec
    import meshlimit.cluster.wire.messages as m

    encoded = _seeds_codec()
    join = codec.encode(m.Envelope("b", ("b", 1), (m.Join("b", ("b", 1), 1),)))
    seeds = list(encoded)
    seeds += [join + SEP + e for e in encoded]  # a member first, then each message from it
    # Replies to the checks the harness forwards to b once b has joined.
    node = _node_run([join], collect_pending=True)
    pending = sorted(node._pending)
    if pending:
        results = tuple(
            m.CheckResult(t, i % 2 == 0, 10, 5, 30_000, 0 if i % 2 == 0 else 10_000)
            for i, t in enumerate(pending)
        )
        reply = codec.encode(m.Envelope("b", ("b", 1), (m.ReplyBatch(results),)))
        seeds.append(join + SEP + reply)
    return seeds


def _seeds_rules() -> list[bytes]:
    rules = [
        "100/minute",
        "10/s",
        "20/250ms",
        "5000/hour burst 500",
        "300/90s algo fixed_window",
        "10 per minute",
        "1/1.5s",
        "7/2 hours",
        "10/m algo token_bucket burst 5 shadow",
        "4294967295/366d",
        "1/1ms",
        "10/minute shadow",
        "3 PER 0.001 s",
        "1/0.5ms",
    ]
    return [r.encode() for r in rules]


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def _seeds_resp() -> list[bytes]:
    commands = [
        _resp(b"PING"),
        _resp(b"PING", b"hello"),
        _resp(b"ML.CHECK", b"c1"),
        _resp(b"ML.CHECK", b"c4", b"5"),
        _resp(b"CL.THROTTLE", b"k", b"15", b"30", b"60"),
        _resp(b"CL.THROTTLE", b"k", b"15", b"30", b"60", b"2"),
        _resp(b"HELLO", b"3"),
        _resp(b"HELLO", b"2", b"SETNAME", b"app"),
        _resp(b"CLIENT", b"SETNAME", b"app"),
        _resp(b"CLIENT", b"SETINFO", b"lib-name", b"redis-py"),
        _resp(b"QUIT"),
        _resp(b"ML.CHECK"),
        _resp(b"NOPE", b"x"),
        b"*0\r\n",
        _resp(b"ML.CHECK", b"\xff\xfe"),
        _resp(b"CL.THROTTLE", b"k", b"-1", b"0", b"0"),
        _resp(b"ml.check", b"x" * 300),
    ]
    seeds = list(commands)
    seeds.append(b"".join(commands[:11]))  # a pipeline
    seeds.append(b"".join(_resp(b"ML.CHECK", b"c%d" % i) for i in range(12)))  # past the bound
    seeds.append(_resp(b"PING", b"y" * 600))  # a frame past the fuzzing bound
    seeds.append(b"*2\r\n$4\r\nPING\r\n*1\r\n:1\r\n")  # not bulk strings
    seeds.append(b"%1\r\n+a\r\n+b\r\n")  # RESP3 map
    return seeds


def _seeds_auth() -> list[bytes]:
    # FuzzedDataProvider input: any bytes; a few shapes of valid ones.
    import random

    rng = random.Random(1)
    return [bytes(rng.getrandbits(8) for _ in range(n)) for n in (16, 64, 200, 600)]


def _seeds_http() -> list[bytes]:
    bodies = [
        {"client": "c1"},
        {"client": "c1", "cost": 3},
        {"client": "c1", "cost": 0},
        {"rule": "100/minute"},
        {"rule": "@gold"},
        {"rule": "5/s burst 2", "client": "c2"},
        {"client": "x" * 256},
        {"client": "é" * 128, "cost": 4294967295},
        {"client": "c1", "cost": True},
        {"client": "c1", "cost": 1.5},
        {"rule": None},
        {"client": "c1", "extra": 1},
        [1, 2],
        "text",
        {"client": ["nested", {"a": [1]}]},
    ]
    seeds = [json.dumps(b).encode() for b in bodies]
    seeds += [b"", b"  ", b"{", b'{"client": "\\ud800"}', b"\xff\xfe{}", b"[" * 50 + b"]" * 50]
    return seeds


SEEDS = {
    "codec": _seeds_codec,
    "rules": _seeds_rules,
    "resp": _seeds_resp,
    "auth": _seeds_auth,
    "node": _seeds_node,
    "http": _seeds_http,
}


def _tokens(text: str) -> list[str]:
    """Dictionary tokens, written ``|``-separated to keep the table short."""
    return text.split("|")


DICTIONARY = {  # libFuzzer -dict tokens
    "rules": _tokens(
        "/| per |burst|algo|shadow|sliding_window|fixed_window|token_bucket|ms|s|sec|second"
        "|seconds|m|min|minute|minutes|h|hour|hours|d|day|days|.|4294967295|366"
    ),
    "resp": _tokens(
        "\r\n|*1\r\n|*2\r\n|*3\r\n|*5\r\n|*6\r\n|$1\r\n|$-1\r\n|ML.CHECK|CL.THROTTLE"
        "|PING|QUIT|HELLO|CLIENT|SETNAME|SETINFO|AUTH|9223372036854775807|-9223372036854775808"
        "|4294967295|:|+|-|%|~|_|,|#|(|=|>"
    ),
    "http": _tokens(
        '"client"|"cost"|"rule"|true|null|1e400|-0|@|\\ud800|/minute| burst |4294967296|[|{|":"'
    ),
}


# --- harnesses ------------------------------------------------------------------------------


def _fingerprint(error: BaseException) -> str:
    """Exception type and the innermost frame inside meshlimit (or the script)."""
    frames = traceback.extract_tb(error.__traceback__)
    inner = [
        f
        for f in frames
        if "meshlimit" in f.filename or "/cluster/" in f.filename or "/core/" in f.filename
    ] or frames
    where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    return f"{type(error).__name__} at {where}"


def run_codec(data: bytes) -> None:
    import meshlimit.cluster.wire.codec as codec

    try:
        env = codec.decode(data)
    except codec.DecodeError as error:
        if error.reason == "internal":
            raise Finding(f"decode's safety net caught a bug: {error}") from None
        return
    again = codec.decode(codec.encode(env))
    if again != env:
        raise Finding(f"re-encoding changed the envelope: {env!r} -> {again!r}")


def run_rules(data: bytes) -> None:
    from meshlimit.core.rules import parse_rule

    text = data.decode("utf-8", "replace")
    try:
        rule = parse_rule(text)
    except ValueError:
        return
    canonical = str(rule)
    try:
        again = parse_rule(canonical)
    except ValueError as error:
        raise Finding(
            f"{text!r} parsed, its canonical form {canonical!r} does not: {error}"
        ) from None
    if again != rule or again.shadow != rule.shadow:
        raise Finding(f"{text!r} -> {rule!r}; {canonical!r} -> {again!r}")


def _auth(data: bytes, provider: Any) -> None:
    from meshlimit.cluster.wire.auth import TRAILER, _mac, new_guard

    fdp = provider(data)
    guard = new_guard(AUTH_KEYS, 1)
    now = T0 + fdp.ConsumeIntInRange(-(10**12), 10**12)
    accepted: set[bytes] = set()
    sent: list[bytes] = []
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        mode = fdp.ConsumeIntInRange(0, 3)
        now += fdp.ConsumeIntInRange(0, 100 * 10**9)  # time goes forward
        if mode == 0:  # raw bytes
            datagram = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
        elif mode == 3 and sent:  # a replay of an earlier datagram
            datagram = sent[fdp.ConsumeIntInRange(0, len(sent) - 1)]
        else:  # sealed under a key of the ring (or not), with chosen trailer fields
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            boot = fdp.ConsumeIntInRange(0, 2**64 - 1)
            seq = fdp.ConsumeIntInRange(0, 2**64 - 1)
            skew = fdp.ConsumeIntInRange(-(40 * 10**9), 40 * 10**9)
            sent_ns = now + skew if mode == 1 else fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
            key = (AUTH_KEYS + (b"not-in-the-ring-00",))[fdp.ConsumeIntInRange(0, 2)]
            head = payload + TRAILER.pack(boot, seq, sent_ns)
            datagram = head + _mac(key, head)
        sent.append(datagram)
        opened = guard.open(datagram, now_ns=now)
        if opened is None:
            continue
        if type(opened) is not bytes:
            raise Finding(f"open returned {type(opened).__name__}")
        if datagram in accepted:  # a key holder may mint new ones; a replay is the same bytes
            boot, seq, sent_ns = TRAILER.unpack_from(datagram, len(datagram) - 16 - TRAILER.size)
            raise Finding(f"replay accepted: boot {boot} seq {seq} sent {sent_ns} at {now}")
        accepted.add(datagram)


def _node_config() -> Any:
    from meshlimit.cluster.node.config import NodeConfig

    return NodeConfig.preset("sim", "a", ("a", 1))


_NODE_CLASS: Any = None


def _node_class() -> Any:
    """Node, recording the errors its dispatch swallows (it counts and drops them)."""
    global _NODE_CLASS
    if _NODE_CLASS is None:
        from meshlimit.cluster.node import Node

        class RecordingNode(Node):
            def _dispatch(self, envelope: Any, message: Any, now_ns: int, wall: int) -> None:
                try:
                    super()._dispatch(envelope, message, now_ns, wall)
                except Exception as error:
                    self.swallowed.append(error)
                    raise

        _NODE_CLASS = RecordingNode
    return _NODE_CLASS


CLIENTS = ("c1", "c2", "c3", "x" * 256)


def _node_run(parts: list[bytes], *, collect_pending: bool = False) -> Any:
    import random

    import meshlimit.cluster.wire.codec as codec

    node = _node_class()(_node_config(), random.Random(0), now_ns=T0)
    node.swallowed = []
    joining = len(parts) % 2 == 0  # an even number of datagrams: a node still joining b
    node.start([("b", 1)] if joining else [], now_ns=T0)
    now = T0

    def drain() -> None:
        for datagram, _addr in node.datagrams_to_send():
            try:
                codec.decode(datagram, node.limits)
            except codec.DecodeError as error:
                raise Finding(f"the node sent a datagram its peers refuse: {error}") from None
        node.events()

    for part in parts:
        now += 50_000_000
        node.receive(part, ("b", 1), now_ns=now)
        for client in CLIENTS:
            node.check(client, 1, now_ns=now)
        if collect_pending:
            return node
        node.tick(now_ns=now)
        drain()
    for step in (1, 61):  # forward timeouts, gossip, sweeps, anti-entropy, a new window
        now += step * 1_000_000_000
        node.tick(now_ns=now)
        node.check("c1", 0, now_ns=now)
        drain()
    node.next_deadline()
    for error in node.swallowed:
        if not isinstance(error, ValueError):
            raise Finding(f"the node swallowed {_fingerprint(error)}: {error!r}") from error
    return node


def run_node(data: bytes) -> None:
    _node_run(data.split(SEP)[:16])


class _FakeRequest:
    """What ``_json_object`` reads from an aiohttp request."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self) -> bytes:
        return self.body


def run_http(data: bytes) -> None:
    import random
    from types import SimpleNamespace

    import meshlimit.cluster.daemon.http_api as api
    from meshlimit.cluster.node import Node
    from meshlimit.core.headers import ratelimit_headers

    coroutine = api._json_object(_FakeRequest(data))  # type: ignore[arg-type]
    try:
        coroutine.send(None)
    except StopIteration as stop:
        body = stop.value
    except api.BadRequest:
        return
    else:
        coroutine.close()
        raise Finding("_json_object suspended on a body already read")
    node = Node(_node_config(), random.Random(0), now_ns=T0)
    node.start([], now_ns=T0)
    runtime = SimpleNamespace(node=node)
    with contextlib.suppress(api.BadRequest):  # POST /v1/check
        api._refuse_unknown(body, api.CHECK_FIELDS)
        client = api._client(body.get("client"), "'client'")
        cost = api._cost(body.get("cost", 1))
        try:
            decision = node.check(client, cost, now_ns=T0)
        except ValueError:
            pass  # the handler answers 400
        else:
            json.dumps(api.decision_json(decision))
            for name, value in ratelimit_headers(decision, node.rule_for(client)).items():
                if not value.isprintable() or "\r" in value or "\n" in value:
                    raise Finding(f"header {name}: {value!r}")
    with contextlib.suppress(api.BadRequest):  # PUT /v1/rules/{client}, client from the path
        body = dict(body)
        path_client = body.pop("client", "c1")
        client = api._client(path_client if isinstance(path_client, str) else "c1", "path")
        api._refuse_unknown(body, api.RULE_FIELDS)
        value = api._rule_value(body.get("rule"))
        try:
            node.set_rule(api.CLIENT_PREFIX + client, value, now_ns=T0)
        except ValueError:
            return  # the handler answers 400
        json.dumps(api.rule_json(runtime, client))  # type: ignore[arg-type]
        node.check(client, 1, now_ns=T0 + 1)


# --- resp ---------------------------------------------------------------------------------


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
        self.node = SimpleNamespace(engine=self.engine)
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


# --- the structure-aware mutator (msgpack targets) ------------------------------------------


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


class _Mutator:
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


# --- the child: one target under atheris --------------------------------------------------------


HARNESSES = {
    "codec": run_codec,
    "rules": run_rules,
    "resp": run_resp,
    "auth": None,  # needs atheris' FuzzedDataProvider: bound in _harness
    "node": run_node,
    "http": run_http,
}


def _harness(target: str) -> Any:
    if target == "auth":
        try:
            import atheris

            provider = atheris.FuzzedDataProvider
        except ImportError:
            sys.exit("--reproduce auth needs atheris' FuzzedDataProvider: pip install atheris")
        return lambda data: _auth(data, provider)
    return HARNESSES[target]


def _signature(error: BaseException) -> str:
    """What makes two findings the same: where an exception came from, or what an oracle
    said (numbers blanked, so one bug found with many inputs is one finding)."""
    if not isinstance(error, Finding):
        return _fingerprint(error)
    if error.__cause__ is not None:
        return f"Finding: {_fingerprint(error.__cause__)}"
    return "Finding: " + re.sub(r"\d+", "N", str(error).splitlines()[0])[:80]


class _Recorder:
    """Writes each distinct finding once, with the input; counts recurrences."""

    def __init__(self, findings: Path) -> None:
        self.dir = findings
        self.counts: dict[str, int] = {}
        self.written_at = 0.0

    def record(self, data: bytes, error: BaseException) -> None:
        signature = _signature(error)
        key = hashlib.sha1(signature.encode()).hexdigest()[:12]
        first = key not in self.counts
        self.counts[key] = self.counts.get(key, 0) + 1
        if first:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{key}.bin").write_bytes(data)
            text = "".join(traceback.format_exception(error))
            (self.dir / f"{key}.txt").write_text(
                f"signature: {signature}\ninput ({len(data)} bytes, hex): {data.hex()}\n\n{text}"
            )
            print(f"\n==== FINDING {key}: {signature}\n{text}", file=sys.stderr, flush=True)
        if first or time.monotonic() - self.written_at > 5:
            self.written_at = time.monotonic()
            (self.dir.parent / "finding_counts.json").write_text(json.dumps(self.counts))


def _child(target: str, corpus: Path, work: Path, seconds: int) -> None:
    import resource

    import atheris

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE_BYTES, CHILD_ADDRESS_SPACE_BYTES))

    with atheris.instrument_imports(include=["meshlimit"]):
        import meshlimit.cluster.daemon.http_api
        import meshlimit.cluster.daemon.resp
        import meshlimit.cluster.node
        import meshlimit.cluster.wire.auth
        import meshlimit.cluster.wire.codec
        import meshlimit.core.rules  # noqa: F401
    import meshlimit.cluster.wire.codec as codec

    decoders = codec._decoders(codec.DEFAULT_LIMITS)  # generated code: instrument it too
    for function in [decoders.sender, decoders.sender_addr, *decoders.by_tag.values()]:
        atheris.instrument_func(function)
    harness = _harness(target)
    recorder = _Recorder(work / "findings")
    recorder.counts = (
        json.loads((work / "finding_counts.json").read_text())
        if (work / "finding_counts.json").exists()
        else {}
    )

    def one_input(data: bytes) -> None:
        try:
            harness(data)
        except Exception as error:  # every escape is a finding; MemoryError included
            recorder.record(data, error)

    args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        f"-max_len={MAX_LEN[target]}",
        f"-artifact_prefix={work}/",
        "-timeout=5",
        "-rss_limit_mb=8192",
        "-close_fd_mask=0",
    ]
    if target in DICTIONARY:
        args.append(f"-dict={work / 'dictionary.txt'}")
    mutator = None
    if target in ("codec", "node"):
        mutator = _Mutator([p.read_bytes() for p in sorted(corpus.iterdir())[:200]])
    atheris.Setup(args, one_input, custom_mutator=mutator)
    atheris.Fuzz()


# --- the parent: seeds, children, summary -----------------------------------------------------


def _dictionary_line(token: str) -> str:
    escaped = "".join(
        c if 32 <= ord(c) < 127 and c not in '"\\' else "".join(f"\\x{b:02x}" for b in c.encode())
        for c in token
    )
    return f'"{escaped}"'


def _parse_log(text: str) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for name, value in re.findall(r"stat::(\w+):\s+(\d+)", text):
        stats[name] = int(value)
    inited = re.search(r"INITED cov: (\d+) ft: (\d+)", text)
    if inited:
        stats.update(seed_cov=int(inited[1]), seed_ft=int(inited[2]))
    status = re.findall(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    if status:
        runs, cov, ft, corp = status[-1]
        stats.update(last_runs=int(runs), cov=int(cov), ft=int(ft), corpus=int(corp))
    return stats


def fuzz_target(target: str, seconds: int, out: Path) -> dict[str, Any]:
    work = out / target
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for seed in seeds:
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
    if target in DICTIONARY:
        lines = [_dictionary_line(t) for t in DICTIONARY[target]]
        (work / "dictionary.txt").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    totals = {"executions": 0, "children": 0, "exits": []}
    seed_cov = None
    last: dict[str, Any] = {}
    log_path = work / "fuzz.log"
    with open(log_path, "w") as log:
        while True:
            left = int(seconds - (time.monotonic() - started))
            if left < 5 or totals["children"] > MAX_RESTARTS:
                break
            command = [
                sys.executable,
                __file__,
                "--child",
                target,
                "--corpus",
                str(corpus),
                "--work",
                str(work),
                "--seconds",
                str(left),
            ]
            log.write(f"\n### child {totals['children']}: {' '.join(command)}\n")
            log.flush()
            start = log.tell()
            code = subprocess.run(command, stdout=log, stderr=log, check=False).returncode
            log.flush()
            totals["children"] += 1
            totals["exits"].append(code)
            with open(log_path) as reader:
                reader.seek(start)
                last = _parse_log(reader.read())
            totals["executions"] += last.get("number_of_executed_units", last.get("last_runs", 0))
            if seed_cov is None:
                seed_cov = last.get("seed_cov")
            if code == 0:
                break
    elapsed = time.monotonic() - started
    counts_path = work / "finding_counts.json"
    counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    findings = []
    for key, count in sorted(counts.items()):
        text = (work / "findings" / f"{key}.txt").read_text()
        findings.append(
            {
                "id": key,
                "count": count,
                "signature": text.splitlines()[0][11:],
                "file": str(work / "findings" / f"{key}.txt"),
            }
        )
    artifacts = sorted(
        str(p)
        for p in work.glob("*-*")
        if p.name.split("-")[0] in ("crash", "oom", "timeout", "leak", "slow")
    )
    return {
        "target": target,
        "seconds": round(elapsed, 1),
        "seeds": len(seeds),
        "executions": totals["executions"],
        "exec_per_s": round(totals["executions"] / elapsed) if elapsed else 0,
        "seed_cov": seed_cov,
        "cov": last.get("cov"),
        "ft": last.get("ft"),
        "corpus": last.get("corpus"),
        "peak_rss_mb": last.get("peak_rss_mb"),
        "children": totals["children"],
        "exit_codes": totals["exits"],
        "findings": findings,
        "artifacts": artifacts,
        "log": str(log_path),
    }


def reproduce(target: str, path: Path) -> int:
    data = path.read_bytes()
    try:
        _harness(target)(data)
    except Exception as error:
        traceback.print_exception(error)
        print(f"\nFINDING: {_fingerprint(error)}")
        return 1
    print("no finding")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="all", choices=("all", *TARGETS))
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--out", type=Path, help="work directory (default: a new temp dir)")
    parser.add_argument("--reproduce", nargs=2, metavar=("TARGET", "FILE"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.corpus, args.work, args.seconds)
        return 0
    if args.reproduce:
        return reproduce(args.reproduce[0], Path(args.reproduce[1]))
    try:
        import atheris  # noqa: F401
    except ImportError:
        sys.exit("atheris is not installed: .venv/bin/pip install atheris")
    out = args.out or Path(tempfile.mkdtemp(prefix="meshlimit-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    targets = TARGETS if args.target == "all" else (args.target,)
    print(__doc__.split("Method (the output header says it again):")[1].split("This is a")[0])
    print(f"targets: {', '.join(targets)}; {args.seconds} s each; work dir {out}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores\n", flush=True)
    results = []
    for target in targets:
        print(f"--- {target}: fuzzing for {args.seconds} s ...", flush=True)
        result = fuzz_target(target, args.seconds, out)
        results.append(result)
        print(
            f"    {result['executions']:,} executions, {result['exec_per_s']:,}/s, "
            f"cov {result['seed_cov']} (seeds) -> {result['cov']} ft {result['ft']}, corpus {result['corpus']} "
            f"(from {result['seeds']} seeds), children {result['children']} "
            f"exit {result['exit_codes']}",
            flush=True,
        )
        for finding in result["findings"]:
            print(
                f"    FINDING {finding['id']} x{finding['count']}: {finding['signature']}\n"
                f"            {finding['file']}"
            )
        for artifact in result["artifacts"]:
            print(f"    libFuzzer artifact: {artifact}")
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(
        f"\n{'target':8} {'executions':>12} {'exec/s':>8} {'cov':>6} {'ft':>6} {'corpus':>7}"
        f"  findings"
    )
    for r in results:
        names = ", ".join(f"{f['signature']} (x{f['count']})" for f in r["findings"]) or "none"
        names += "".join(f"; artifact {Path(a).name}" for a in r["artifacts"])
        print(
            f"{r['target']:8} {r['executions']:>12,} {r['exec_per_s']:>8,} {r['cov']!s:>6} "
            f"{r['ft']!s:>6} {r['corpus']!s:>7}  {names}"
        )
    print(f"\nsummary: {out / 'summary.json'}")
    return 1 if any(r["findings"] or r["artifacts"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
