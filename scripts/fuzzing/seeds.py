"""Valid inputs for each target, written to its corpus before fuzzing starts, and the
dictionary tokens libFuzzer splices into inputs of the text formats."""

from __future__ import annotations

import json
from typing import Any

from fuzzing.common import SEP, T0
from fuzzing.oracles import node_run


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
    node = node_run([join], collect_pending=True)
    pending = sorted(node.forwarding.pending)
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
