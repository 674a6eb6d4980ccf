"""The check route's fast path (``cluster/daemon/http_check.py``): the same bytes as the app.

Two one-node clusters on one frozen clock, one served by aiohttp's plain ``AppRunner``
(every request through the router and middleware), one by :class:`HttpRunner` (the
daemon's: checks ahead of the application), get the same requests on one keep-alive
connection each; every answer must be the same bytes but for the ``Date`` header.
"""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner
from runtimes import started_runtime

import meshlimit.cluster.runtime as runtime_module
from meshlimit.cluster.daemon import http_check
from meshlimit.cluster.daemon.http_api import make_app
from meshlimit.cluster.daemon.http_check import HttpRunner

pytestmark = pytest.mark.loopback


class CheckServer(TestServer):
    """aiohttp's ``TestServer`` on the daemon's runner (:class:`HttpRunner`)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return HttpRunner(self.app, **kwargs)


def post(body: bytes, headers: bytes = b"", target: bytes = b"/v1/check") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: h\r\n%sContent-Length: %d\r\n\r\n"
    return head % (target, headers, len(body)) + body


#: Checks admitted and refused (rule 3/day), every refusal the app answers, the requests
#: the fast path leaves to the app (another method, a query, 100-continue, HTTP/1.0), and
#: a last check on ``Connection: close``.
REQUESTS = [
    post(b'{"client":"alice","cost":1}'),
    post(b' {"client" : "alice" }\n'),
    post(b'{"client":"alice"}'),
    post(b'{"client":"alice","cost":1}'),  # refused: Retry-After
    post(b'{"client":"bob","cost":0}'),
    post(b'{"client":"bob","cost":4}'),  # can never fit
    post(b'{"cost":1,"client":"carol"}'),  # another order: json
    post(b'{"client":"caf\\u00e9"}'),  # an escape: json
    post(b'{"client":"a","cost":-1}'),
    post(b'{"client":"a","cost":01}'),
    post(b'{"client":"a","cost":1.0}'),
    post(b'{"client":"a","cost":true}'),
    post(b'{"client":"","cost":1}'),
    post(b'{"client":"' + b"x" * 257 + b'"}'),
    post(b'{"client":"a","extra":1}'),
    post(b"[1]"),
    post(b"not json"),
    post(b""),
    post(b'{"client":"' + b"x" * 70_000 + b'"}'),  # over max_body_bytes: 413
    post(b'{"client":"dave"}', target=b"/v1/check?x=1"),
    post(b'{"client":"dave"}', b"Expect: 100-continue\r\n"),
    b"GET /v1/check HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
    b'POST /v1/check HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 17\r\n\r\n{"client":"erin"}',
    post(b'{"client":"erin"}', b"Connection: close\r\n"),
]


async def exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Each request's answer on one connection (the answer's end found by its length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            if answer.startswith(b"HTTP/1.1 100"):
                answer += await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", answer)
            assert length is not None, answer
            answer += await reader.readexactly(int(length[1]))
            answers.append(re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", answer))
    finally:
        writer.close()
    return answers


def test_the_fast_path_answers_as_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(monotonic_ns=lambda: 10**12, time_ns=lambda: 1_750_000_123 * 10**9)
    monkeypatch.setattr(runtime_module, "time", clock)
    written = 0
    prepare = http_check._Written.prepare

    async def counted(self: http_check._Written, request: Any) -> None:
        nonlocal written
        written += 1
        await prepare(self, request)

    monkeypatch.setattr(http_check._Written, "prepare", counted)

    async def main() -> tuple[list[bytes], list[bytes]]:
        async with started_runtime("n1") as plain, started_runtime("n1") as fast:
            plain_server = TestServer(make_app(plain), host="127.0.0.1")
            fast_server = CheckServer(make_app(fast), host="127.0.0.1")
            await plain_server.start_server()
            await fast_server.start_server()
            try:
                assert plain_server.port is not None and fast_server.port is not None
                expected = await exchange(plain_server.port, REQUESTS)
                served = await exchange(fast_server.port, REQUESTS)
            finally:
                await plain_server.close()
                await fast_server.close()
        return expected, served

    expected, served = asyncio.run(main())
    for request, want, got in zip(REQUESTS, expected, served, strict=True):
        assert got == want, request[:80]
    statuses = [int(answer.split(b" ")[1]) for answer in expected]  # 100: then its 200
    assert statuses == [200] * 8 + [400] * 10 + [413, 200, 100, 405, 200, 200, 200]
    assert b"Retry-After: " in expected[3] and b'"allowed": false' in expected[3]
    assert written == 8  # the checks that passed: keep-alive HTTP/1.1, no query, no Expect
