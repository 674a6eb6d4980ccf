"""The HTTP API's hot route, ``POST /v1/check``, served ahead of aiohttp's application.

Theory of operation. :class:`HttpRunner` is aiohttp's ``AppRunner`` whose server
hands each request to the :func:`dispatcher`'s handler first. A check (``POST /v1/check`` exactly, HTTP/1.1,
keep-alive, no ``Expect``) is decided by ``http_api.decide_check``, the route's own code,
and answered by a :class:`_Written` response: the status line, headers and body
formatted as one ``bytes`` and written in one call, byte for byte what the route's
``web.Response`` sends (the same headers in the same order, aiohttp's ``Date`` and
``Server``). Everything else, and every check that fails (a 400 is answered by the
application, which reads the same cached body and refuses it with the same message), goes
to the application as before: router, middleware, JSON errors. So the route's answers do
not depend on which path served them; ``tests/test_http_check.py`` compares the bytes.

Why: per check, aiohttp's router, its middleware chain (``_json_errors`` and the
``_fix_request_current_app`` it adds) and its ``Response`` machinery (a header multidict,
``prepare``, the header serializer, ``write_eof``) cost more than deciding the check;
see docs/performance.md, "Daemon front-ends".

Bounds and backpressure are aiohttp's: the body is read within ``client_max_size`` (413
past it, as the route answers), and after its write a check waits while the transport is
paused (``StreamWriter.drain``: a client that does not read stops its requests being
handled). This leans on a few aiohttp internals (the request's ``_payload_writer``,
``rfc822_formatted_time``, the server's ``request_handler``); the byte comparison of
``tests/test_http_check.py`` fails if an aiohttp upgrade changes what they do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_server import Server

from meshlimit.cluster.daemon.http_api import (
    JSON_TYPE,
    MAX_BODY,
    RUNTIME,
    BadRequest,
    decide_check,
    decision_body,
    json_error,
)
from meshlimit.core.headers import ratelimit_headers

log = logging.getLogger("meshlimit.http")

CHECK_PATH = "/v1/check"
_HEAD = (
    "HTTP/1.1 200 OK\r\n{}Content-Type: {}\r\nContent-Length: {}\r\nDate: {}\r\nServer: {}\r\n\r\n"
)
RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class HttpRunner(web.AppRunner):
    """``web.AppRunner`` for an app of ``http_api.make_app``, with ``POST /v1/check`` served
    ahead of the application (:func:`dispatcher`); with an ``on_response_prepare`` hook in
    the app, every request goes to the app."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        app = self.app
        if not app.on_response_prepare:  # a hook there must see every response: no fast path
            server.request_handler = dispatcher(app, server.request_handler)
        return server


def dispatcher(app: web.Application, handle: RequestHandler) -> RequestHandler:
    """The server's request handler: checks by :func:`check`, the rest by ``handle`` (the
    application's own)."""
    runtime, max_body = app[RUNTIME], app[MAX_BODY]

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        if (
            request.raw_path == CHECK_PATH
            and request.method == "POST"
            and request.version == HttpVersion11
            and request.keep_alive
            and hdrs.EXPECT not in request.headers
        ):
            try:
                decision, rule = await decide_check(runtime, request)
            except BadRequest:
                return await handle(request)  # the same refusal, from the route (body cached)
            except web.HTTPRequestEntityTooLarge:
                return json_error(413, f"request body larger than {max_body} bytes")
            except Exception:
                log.exception("unexpected error method=POST path=%s", CHECK_PATH)
                return json_error(500, "internal error (logged by the node)")
            headers = ratelimit_headers(decision, rule)
            body = decision_body(decision)
            head = _HEAD.format(
                "".join(f"{name}: {value}\r\n" for name, value in headers.items()),
                JSON_TYPE,
                len(body),
                rfc822_formatted_time(),
                SERVER_SOFTWARE,
            )
            written = _Written(head.encode() + body, len(body), headers)
            return cast(web.StreamResponse, written)  # all aiohttp uses of one, see _Written
        return await handle(request)

    return dispatch


class _Written:
    """A 200 response whose bytes are ready: what aiohttp's request handler uses of a
    response (``prepare``, ``write_eof``, ``keep_alive``; ``status``, ``body_length`` and
    ``headers`` for an access log)."""

    __slots__ = ("data", "body_length", "headers")
    status = 200
    keep_alive = True

    def __init__(self, data: bytes, body_length: int, headers: dict[str, Any]) -> None:
        self.data = data
        self.body_length = body_length
        self.headers = headers

    async def prepare(self, request: web.BaseRequest) -> None:
        """Write the response (a ``ConnectionError`` if the client left: aiohttp's reset)."""
        writer: Any = request._payload_writer
        writer._write(self.data)
        await writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing more to write: :meth:`prepare` wrote all."""
