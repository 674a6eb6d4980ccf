"""The servers the front-end benchmark drives: the meshlimit node with ``--resp``, the
floors (the same stacks answering a constant), and where each runs (pinning)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.processes import HOST, NodeProcess, free_port, pinned, start_server

from frontend_bench.constants import LOAD_CPU, SERVER_CPU


@dataclass(frozen=True, slots=True)
class Pinning:
    """The CPU the servers run on and the CPU the load generators (and this script) run on;
    None when not pinned."""

    server_cpu: int | None = None
    load_cpu: int | None = None

    @classmethod
    def detect(cls) -> Pinning:
        """Servers on ``SERVER_CPU``, generators on ``LOAD_CPU``, when ``taskset`` exists and
        there are 2+ CPUs; no pinning otherwise."""
        if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
            return cls(SERVER_CPU, LOAD_CPU)
        return cls()


LUA = """\
-- POST /v1/check, cycling the client id over %(n)d ids (one counter per wrk thread).
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/check", nil,
                    '{"client":"client-' .. (n %% %(n)d) .. '","cost":1}')
end
"""


#: The floors: the same front-end stacks with the check replaced by a constant answer, so
#: that a row says what the framework alone costs on this machine. Not meshlimit code.
FLOOR_SRC = """\
import asyncio, json, sys
import uvloop

KIND, HOST, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
ANSWER = {"allowed": True, "limit": 1000000000, "remaining": 999999999,
          "reset_after": 23.865, "retry_after": 0.0, "path": "owner"}
REPLY = b"*6\\r\\n:1\\r\\n:1000000000\\r\\n:999999999\\r\\n:23865\\r\\n:0\\r\\n$5\\r\\nowner\\r\\n"


def http():
    from aiohttp import web

    async def check(request):
        body = json.loads(await request.read())  # parsed, as the node does, then ignored
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/check", check)
    web.run_app(app, host=HOST, port=PORT, access_log=None, print=None)


class Resp(asyncio.Protocol):
    def connection_made(self, transport):
        import hiredis
        self.transport, self.reader = transport, hiredis.Reader()

    def data_received(self, data):
        self.reader.feed(data)
        out = []
        while (command := self.reader.gets()) is not False:
            ok = command[0].upper() == b"ML.CHECK"
            out.append(REPLY if ok else b"-ERR unknown command\\r\\n")
        if out:
            self.transport.write(b"".join(out))


async def resp():
    server = await asyncio.get_running_loop().create_server(Resp, HOST, PORT)
    await server.serve_forever()


uvloop.install()
http() if KIND == "http" else asyncio.run(resp())
"""


class FrontNode(NodeProcess):
    """A ``meshlimit node`` with ``--resp`` too, started under ``taskset`` when pinning."""

    def __init__(self, name: str, *, default: str, cpu: int | None, log_dir: Path) -> None:
        self.resp_port = free_port(socket.SOCK_STREAM)
        self.cpu = cpu
        super().__init__(
            name, default=default, log_dir=log_dir, extra=["--resp", f"{HOST}:{self.resp_port}"]
        )

    @property
    def argv(self) -> list[str]:
        return pinned(self.cpu) + super().argv

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # taskset execs the node: same pid

    def checks(self) -> Counter[str]:
        """``meshlimit_checks_total`` summed by result, from ``/metrics``."""
        conn_text = _http_get(self.http_port, "/metrics")
        counts: Counter[str] = Counter()
        for m in re.finditer(
            r'^meshlimit_checks_total\{path="\w+",result="(\w+)"\} (\S+)$', conn_text, re.M
        ):
            counts[m[1]] += int(float(m[2]))
        return counts


def _http_get(port: int, path: str) -> str:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def start_floor(kind: str, port: int, cpu: int | None, src: Path) -> subprocess.Popen[bytes]:
    """A floor server (``FLOOR_SRC``) of ``kind`` "http" or "resp", ready for connections."""
    argv = pinned(cpu) + [sys.executable, str(src), kind, HOST, str(port)]
    return start_server(argv, port, f"the {kind} floor server", timeout_s=20, stderr=None)
