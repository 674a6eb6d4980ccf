"""``meshlimit node``: one cluster member as a long-running process.

Theory of operation. The daemon validates its flags (argparse: exit 2 with a
clear message), builds a :class:`~meshlimit.cluster.config.NodeConfig` from a
preset and the flags, and runs on uvloop when installed. It binds the HTTP
port first and the UDP port second, so a busy port is reported (exit 1)
before the node has told any seed it exists. Once both are up it prints one
readiness line to stdout, ``meshlimit node ready id=... udp=HOST:PORT
http=HOST:PORT``, which tests and scripts wait for. SIGTERM or SIGINT stops
the HTTP server (in-flight checks finish), leaves the cluster gracefully
(counts handed over, peers told) and exits 0.

Logs go to stderr, one ``key=value`` line per event; membership changes come
from the runtime's ``meshlimit.cluster`` logger at INFO. This module and the
other front-ends are the only code that may read files and the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

from meshlimit.core.rules import parse_rule

from .config import NodeConfig
from .messages import Address

log = logging.getLogger("meshlimit.daemon")

PRESETS = ("lan", "local", "wan")
MODES = ("strict", "local")
#: The codec carries node ids of at most 64 UTF-8 bytes.
MAX_NODE_ID_BYTES = 64
#: In-flight HTTP requests get this long to finish at shutdown (a forwarded check
#: is decided within the forward timeout, at most a second in every preset).
HTTP_SHUTDOWN_S = 2.0


# --- arguments ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``meshlimit node``."""
    parser.add_argument(
        "--bind",
        required=True,
        type=_udp_address,
        metavar="HOST:PORT",
        help="UDP address to bind and advertise to peers (an address they can reach)",
    )
    parser.add_argument(
        "--seed",
        action="append",
        default=[],
        type=_address,
        metavar="HOST:PORT",
        help="UDP address of a member to join through (repeat for several)",
    )
    parser.add_argument(
        "--http",
        type=_address,
        metavar="HOST:PORT",
        help="serve the JSON HTTP API here (port 0: any free port, shown on the ready line)",
    )
    parser.add_argument(
        "--node-id",
        type=_node_id,
        metavar="ID",
        help="unique node id (default: the --bind address)",
    )
    parser.add_argument(
        "--default",
        type=_rule,
        default="100/minute",
        metavar="RULE",
        help="rule for clients without one, e.g. '100/minute' (default: %(default)s)",
    )
    parser.add_argument(
        "--mode", choices=MODES, default="strict", help="decision mode (default: %(default)s)"
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="lan",
        help="timings: lan, local (loopback, faster) or wan (default: %(default)s)",
    )
    parser.add_argument(
        "--seed-rng",
        type=int,
        metavar="N",
        help="seed of the node's random generator (probe order), for reproducible runs",
    )


def _address(text: str) -> Address:
    from meshlimit.node import parse_address

    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _udp_address(text: str) -> Address:
    host, port = _address(text)
    if port == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: name a port; peers are told this address, so it cannot be 0"
        )
    if host in ("0.0.0.0", "::", ""):
        raise argparse.ArgumentTypeError(
            f"{text!r}: peers are told this address; bind one they can reach, not {host!r}"
        )
    return host, port


def _node_id(text: str) -> str:
    size = len(text.encode("utf-8", "surrogateescape"))
    if not text or size > MAX_NODE_ID_BYTES:
        raise argparse.ArgumentTypeError(f"node id must be 1 to {MAX_NODE_ID_BYTES} bytes")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"node id {text!r} must be printable, without spaces")
    return text


def _rule(text: str) -> str:
    try:
        return str(parse_rule(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_config(args: argparse.Namespace) -> NodeConfig:
    """The node's configuration from parsed flags."""
    host, port = args.bind
    return NodeConfig.preset(
        args.preset,
        args.node_id or f"{host}:{port}",
        args.bind,
        mode=args.mode,
        default_rule=args.default,
    )


# --- logging --------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=... msg="..." key=value ...``: one line per record.

    Values with spaces, quotes or ``=`` are JSON-quoted; fields passed with
    ``extra={...}`` follow the message.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t\\') or not text.isprintable():
        return json.dumps(text)
    return text


def setup_logging(level: int = logging.INFO) -> None:
    """Send meshlimit's loggers to stderr in ``key=value`` form."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("meshlimit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# --- running --------------------------------------------------------------------------


def run_daemon(args: argparse.Namespace) -> int:
    """Run a node until SIGTERM/SIGINT; 0 after a graceful leave, 1 if it cannot start."""
    from .runtime import install_uvloop

    setup_logging()
    try:
        config = build_config(args)
    except (ValueError, TypeError) as error:
        print(f"meshlimit node: {error}", file=sys.stderr)
        return 2
    uvloop = install_uvloop()
    try:
        return asyncio.run(_serve(config, args, uvloop=uvloop))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


async def _serve(config: NodeConfig, args: argparse.Namespace, *, uvloop: bool) -> int:
    from aiohttp import web

    from .http_api import make_app
    from .runtime import Runtime

    runtime = Runtime(config, seed=args.seed_rng)
    runner: web.AppRunner | None = None
    http_addr = "off"
    try:
        if args.http is not None:
            # access_log=None: one line per check would drown the membership events.
            runner = web.AppRunner(
                make_app(runtime), access_log=None, shutdown_timeout=HTTP_SHUTDOWN_S
            )
            await runner.setup()
            site = web.TCPSite(runner, args.http[0], args.http[1])
            try:
                await site.start()
            except OSError as error:
                return _cannot_bind("HTTP", args.http, error)
            http_addr = _format_addr(runner.addresses[0])
        try:
            await runtime.start(list(args.seed))
        except OSError as error:
            return _cannot_bind("UDP", config.addr, error)
        stop = _install_signal_handlers()
        udp_addr = _format_addr(config.addr)
        log.info(
            "node started",
            extra={"node": config.node_id, "udp": udp_addr, "http": http_addr, "uvloop": uvloop},
        )
        print(
            f"meshlimit node ready id={config.node_id} udp={udp_addr} http={http_addr}", flush=True
        )
        signum = await stop.get()
        log.info("leaving", extra={"signal": signal.Signals(signum).name})
        if runner is not None:
            await runner.cleanup()
            runner = None
        await runtime.stop()
        log.info("node stopped", extra={"node": config.node_id})
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        await runtime.stop(leave=False)  # idempotent: closes whatever is still open


def _install_signal_handlers() -> asyncio.Queue[int]:
    """SIGTERM and SIGINT put their number on the returned queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, queue.put_nowait, signum)
    return queue


def _cannot_bind(what: str, addr: tuple[Any, ...], error: OSError) -> int:
    reason = error.strerror or str(error)
    print(
        f"meshlimit node: cannot bind {what} {_format_addr(addr)}: {reason}",
        file=sys.stderr,
        flush=True,
    )
    return 1


def _format_addr(addr: tuple[Any, ...] | str) -> str:
    if isinstance(addr, str):  # a unix socket path
        return addr
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
