"""The oracles of the codec, rules, auth, node and http targets: each runs one input
through the code under test and raises (a :class:`~fuzzing.common.Finding`, or whatever
escaped) when the code misbehaves. The RESP target's oracle is in
:mod:`fuzzing.resp_oracle`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from fuzzing.common import AUTH_KEYS, CLIENTS, SEP, T0, Finding, fingerprint
from fuzzing.resp_oracle import run_resp


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


def node_run(parts: list[bytes], *, collect_pending: bool = False) -> Any:
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
            raise Finding(f"the node swallowed {fingerprint(error)}: {error!r}") from error
    return node


def run_node(data: bytes) -> None:
    node_run(data.split(SEP)[:16])


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


#: The oracle of each target but auth, which needs atheris' FuzzedDataProvider: bound in
#: :func:`harness_for`.
HARNESSES: dict[str, Callable[[bytes], None]] = {
    "codec": run_codec,
    "rules": run_rules,
    "resp": run_resp,
    "node": run_node,
    "http": run_http,
}


def harness_for(target: str) -> Callable[[bytes], None]:
    """The oracle of ``target``, taking one input."""
    if target == "auth":
        try:
            import atheris

            provider = atheris.FuzzedDataProvider
        except ImportError:
            sys.exit("--reproduce auth needs atheris' FuzzedDataProvider: pip install atheris")
        return lambda data: _auth(data, provider)
    return HARNESSES[target]
