"""``meshlimit ctl forget NODE`` and ``DELETE /v1/members/{node}`` over real runtimes.

Two runtimes on loopback (``local`` preset): ``n2`` joins ``n1`` and then stops
without leaving, as a crashed process would; once ``n1`` holds it dead, an operator
forgets it through the HTTP API and through ``meshlimit ctl``. Everything started is
stopped in ``finally`` (``started_runtime``); nothing sleeps but the polls for the
cluster's own timers.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from runtimes import started_runtime

from meshlimit.cluster.daemon.ctl import add_arguments, run_ctl
from meshlimit.cluster.daemon.http_api import make_app
from meshlimit.cluster.runtime import Runtime

pytestmark = pytest.mark.loopback


async def wait_until(what: str, predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def state_of(runtime: Runtime, node: str) -> str | None:
    return {name: state for name, _, state, _ in runtime.node.members()}.get(node)


async def ctl(port: int, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--http", f"127.0.0.1:{port}", *argv])
    out = io.StringIO()
    code = await asyncio.to_thread(run_ctl, args, out)
    return code, out.getvalue()


def test_an_operator_forgets_a_dead_member_over_http_and_ctl() -> None:
    async def main() -> None:
        async with started_runtime("n1") as n1:
            async with started_runtime("n2", seeds=[n1.node.config.addr]) as n2:
                await wait_until("n2 to join", lambda: state_of(n1, "n2") == "alive")
                await n2.stop(leave=False)  # a crash: n1 must find out by itself
            await wait_until("n1 to hold n2 dead", lambda: state_of(n1, "n2") == "dead")
            assert "n2" in n1.node.membership.quorum()
            client = TestClient(TestServer(make_app(n1), host="127.0.0.1"))
            try:
                await client.start_server()
                port = client.server.port
                assert port is not None
                response = await client.delete("/v1/members/n2")
                assert response.status == 200
                body = await response.json()
                assert body["result"] == "forgotten" and "no longer counts" in body["message"]
                assert "n2" not in n1.node.membership.quorum()
                assert n1.node.degraded.majority, "one of one is a majority again"
                assert await ctl(port, "forget", "n2") == (
                    0,
                    "n2 had already left or been forgotten\n",
                )
                code, _ = await ctl(port, "forget", "n1")  # the node itself: refused (409)
                assert code == 1
                response = await client.delete("/v1/members/ghost")
                assert (
                    response.status == 404 and "no member ghost" in (await response.json())["error"]
                )
            finally:
                await client.close()

    asyncio.run(main())
