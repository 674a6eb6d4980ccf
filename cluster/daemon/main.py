"""``meshlimit node``: one cluster member as a long-running process.

Theory of operation. The daemon validates its flags (argparse: exit 2 with a
clear message), builds a :class:`~meshlimit.cluster.config.NodeConfig` from a
preset and the flags, and runs on uvloop when installed. A host name in
``--bind`` or ``--advertise`` is resolved once, here (peers must be told an IP);
seeds are resolved by the runtime on every join attempt. It binds the HTTP
and RESP ports first, without serving them, so a busy port is reported (exit 1)
before the node has told any seed it exists; then it starts the runtime (UDP
socket, join); only then do the front-ends serve, so no check is ever decided by
a node whose runtime is not running. Until the node has joined it decides
checks from its degraded quota and ``GET /readyz`` answers 503. Once up it
prints one line to stdout, ``meshlimit node ready id=... udp=HOST:PORT
http=HOST:PORT`` (and `` resp=HOST:PORT`` with ``--resp``), which tests and
scripts wait for: the ports are up, not necessarily joined.

SIGTERM or SIGINT drains, within a bounded time: the node leaves the cluster
(counts handed over to the next owners, peers told; ``/readyz`` turns 503)
while the front-ends keep answering for ``DRAIN_S`` (their checks now go to
the new owners), then the HTTP and RESP servers close (in-flight checks
finish, at most ``HTTP_SHUTDOWN_S``), then the UDP socket; exit 0. A second
signal cuts the wait short.

Settings come from flags and, with ``--config FILE``, a TOML file
(``cluster/daemon/config_file.py``); a flag wins over the file. The file's
``[limits]`` are re-applied on SIGHUP and when the file changes (polled every
``--config-poll-s``; ``cluster/daemon/reload.py``); a bad file keeps the rules
in force. With ``--http``, ``GET /metrics`` serves Prometheus metrics
(``cluster/daemon/metrics.py``).

Logs go to stderr, one ``key=value`` line per event (``--log-format json``: a JSON
object; ``--log-level`` the threshold; ``cluster/daemon/logs.py``); membership changes come
from the runtime's ``meshlimit.cluster`` logger at INFO, reloads at INFO (a
bad one at WARNING), and every 10 s with degraded decisions one INFO line
counts them. This module and the other front-ends are the only code that may
read files and the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from meshlimit.cluster.daemon.config_file import (
    MODES,
    PRESETS,
    DaemonConfig,
    check_key_file,
    check_node_id,
    effective_config,
    parse_bind_address,
)
from meshlimit.cluster.daemon.logs import FORMATS, LEVELS, setup_logging
from meshlimit.cluster.daemon.reload import (
    POLL_INTERVAL_S,
    Reloader,
    apply_changes,
    start_changes,
)
from meshlimit.cluster.daemon.rls.daemon import envoy_frontend
from meshlimit.cluster.node.config import NodeConfig
from meshlimit.cluster.wire.addresses import Address, parse_address, parse_udp_address
from meshlimit.core.rules import parse_rule

if TYPE_CHECKING:
    from meshlimit.cluster.daemon.resp import RespServer
    from meshlimit.cluster.daemon.rls.server import EnvoyFrontend
    from meshlimit.cluster.runtime import Runtime

T = TypeVar("T")

log = logging.getLogger("meshlimit.daemon")

#: In-flight HTTP requests get this long to finish at shutdown (a forwarded check
#: is decided within the forward timeout, at most a second in every preset).
HTTP_SHUTDOWN_S = 2.0
#: After leaving, the front-ends keep answering this long before they close. Why 1 s:
#: the hand-over and the news of the leave reach the peers within a few gossip rounds
#: (100 ms each on a LAN), and load balancers see ``/readyz`` fail meanwhile.
DRAIN_S = 1.0


# --- arguments ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``meshlimit node``."""
    parser.add_argument(
        "--bind",
        type=_bind_address,
        metavar="HOST:PORT",
        help="UDP address to bind, and to tell peers unless --advertise is given (then it "
        "may be 0.0.0.0); a host name is resolved once, at start; required here or as "
        "bind in [cluster] of --config",
    )
    parser.add_argument(
        "--advertise",
        type=_udp_address,
        metavar="HOST:PORT",
        help="the UDP address peers reach this node at, when it differs from --bind "
        "(a container binding 0.0.0.0, a mapped port)",
    )
    parser.add_argument(
        "--seed",
        action="append",
        default=[],
        type=_address,
        metavar="HOST:PORT",
        help="UDP address of a member to join through (repeat for several); a host name is "
        "resolved on every join attempt, to all its addresses (a headless service)",
    )
    parser.add_argument(
        "--http",
        type=_address,
        metavar="HOST:PORT",
        help="serve the JSON HTTP API here (port 0: any free port, shown on the ready line)",
    )
    parser.add_argument(
        "--resp",
        type=_address,
        metavar="HOST:PORT",
        help="serve RESP here for Redis clients and meshlimit.client: ML.CHECK, ML.RULE, "
        "ML.RESET, CL.THROTTLE "
        "(port 0: any free port, shown on the ready line)",
    )
    parser.add_argument(
        "--grpc",
        type=_address,
        metavar="HOST:PORT",
        help="serve Envoy's rate limit service (gRPC ShouldRateLimit, health) here "
        "(port 0: any free port, shown on the ready line); see docs/envoy.md",
    )
    parser.add_argument(
        "--ratelimit-config",
        action="append",
        metavar="FILE",
        help="envoy ratelimit YAML config file, or a folder of them (repeat for several); "
        "reloaded on SIGHUP and when it changes",
    )
    parser.add_argument(
        "--merge-domain-config",
        action="store_true",
        default=None,
        help="merge several YAML files of one domain (envoy ratelimit's MERGE_DOMAIN_CONFIG); "
        "otherwise a second file of a domain is an error",
    )
    parser.add_argument(
        "--ratelimit-algorithm",
        choices=("fixed_window", "sliding_window"),
        help="how Envoy descriptors' windows are kept (default: fixed_window, as envoy "
        "ratelimit; sliding_window is meshlimit's opt-in)",
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
        metavar="RULE",
        help="rule for clients without one, e.g. '100/minute' "
        "(default: the config file's, else 100/minute)",
    )
    parser.add_argument(
        "--mode", choices=MODES, help="decision mode (default: the config file's, else strict)"
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="timings: lan, local (loopback: faster gossip and forward timeout, probes as patient as lan) or wan (default: the config file's, else lan)",
    )
    parser.add_argument(
        "--expected-members",
        type=_member_count,
        metavar="N",
        help="the cluster's size as deployed: the majority rule counts at least this many "
        "members, so a minority whose nodes all restarted still knows it is one "
        "(default: the config file's, else learnt from the members)",
    )
    parser.add_argument(
        "--seed-rng",
        type=int,
        metavar="N",
        help="seed of the node's random generator (probe order), for reproducible runs",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file ([cluster], [limits]; see examples/meshlimit.toml); flags "
        "override it; [limits] is reloaded on SIGHUP and when the file changes",
    )
    parser.add_argument(
        "--cluster-key-file",
        type=_key_file,
        metavar="FILE",
        help="file of shared keys (one per line, primary first) authenticating cluster "
        "traffic; see docs/security.md",
    )
    parser.add_argument(
        "--log-level",
        choices=tuple(LEVELS),
        default="info",
        help="least severe log lines written to stderr (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="kv",
        help="log lines as key=value pairs (kv) or JSON objects (default: %(default)s)",
    )
    parser.add_argument(
        "--config-poll-s",
        type=_poll_interval,
        default=POLL_INTERVAL_S,
        metavar="SECONDS",
        help="how often --config is checked for changes; 0: only on SIGHUP (default: %(default)s)",
    )


def _address(text: str) -> Address:
    return _argument(parse_address, text)


def _udp_address(text: str) -> Address:
    return _argument(parse_udp_address, text)


def _bind_address(text: str) -> Address:
    return _argument(parse_bind_address, text)


def _node_id(text: str) -> str:
    return _argument(check_node_id, text)


def _key_file(text: str) -> str:
    return _argument(check_key_file, text)


def _poll_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be from 0 (off) to 3600 seconds")
    return value


def _member_count(text: str) -> int:
    if not text.isdigit() or int(text) > 100_000:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number from 0 to 100000")
    return int(text)


def _argument(check: Callable[[str], T], text: str) -> T:
    """``check(text)`` with a ValueError turned into argparse's error (exit 2)."""
    try:
        return check(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _rule(text: str) -> str:
    try:
        return str(parse_rule(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_config(args: argparse.Namespace) -> NodeConfig:
    """The node's configuration from parsed flags and the ``--config`` file they name."""
    return effective_config(args)[0].node_config()


# --- running --------------------------------------------------------------------------


def run_daemon(args: argparse.Namespace) -> int:
    """Run a node until SIGTERM/SIGINT; 0 after a graceful leave, 1 if it cannot start."""
    from meshlimit.cluster.runtime import install_uvloop

    setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "kv"))
    try:
        settings = effective_config(args)
        config = settings[0].node_config()
    except (ValueError, TypeError) as error:
        print(f"meshlimit node: {error}", file=sys.stderr)
        return 2
    # The rest of the daemon reads the listening addresses from ``args``: give it the
    # effective ones (a flag, else the config file).
    args.http, args.seed = settings[0].cluster.http, list(settings[0].cluster.seeds or ())
    if hasattr(args, "resp"):
        args.resp = settings[0].cluster.resp
    if hasattr(args, "grpc"):
        args.grpc = settings[0].cluster.grpc
    uvloop = install_uvloop()
    try:
        return asyncio.run(_serve(config, args, uvloop=uvloop, settings=settings))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


async def _serve(
    config: NodeConfig,
    args: argparse.Namespace,
    *,
    uvloop: bool,
    settings: tuple[DaemonConfig, DaemonConfig] | None = None,
) -> int:
    from aiohttp import web

    from meshlimit.cluster.daemon import gc_policy
    from meshlimit.cluster.daemon.http_api import make_app
    from meshlimit.cluster.daemon.http_check import HttpRunner
    from meshlimit.cluster.resolve import resolve_address
    from meshlimit.cluster.runtime import Runtime

    settings = settings or effective_config(args)
    cluster = settings[0].cluster
    try:  # peers are told an IP: a host name in --bind or --advertise is resolved now
        bind = await resolve_address(cluster.bind or config.addr)
        advertised = bind if cluster.advertise is None else await resolve_address(config.addr)
    except OSError as error:
        print(f"meshlimit node: {error}", file=sys.stderr, flush=True)
        return 2
    config = replace(config, addr=advertised)
    runtime = Runtime(config, seed=args.seed_rng, bind=bind)
    operator = _Operator(
        runtime, *settings, poll_interval_s=getattr(args, "config_poll_s", POLL_INTERVAL_S)
    )
    runner: web.AppRunner | None = None
    http_addr = "off"
    resp_server: RespServer | None = None  # with --resp
    resp_ready = ""
    http_socket: socket.socket | None = None
    envoy: EnvoyFrontend | None = None  # with --grpc or --ratelimit-config
    grpc_ready = ""
    try:
        if cluster.grpc is not None or cluster.ratelimit_config:
            try:
                envoy = envoy_frontend(runtime, cluster, operator.poll_interval_s)
            except ValueError as error:
                print(f"meshlimit node: {error}", file=sys.stderr, flush=True)
                return 2
            operator.envoy = envoy
            operator.registry.register(envoy.collector())
            if cluster.grpc is not None:
                try:
                    grpc_ready = f" grpc={_format_addr(await envoy.bind(*cluster.grpc))}"
                except OSError as error:
                    return _cannot_bind("gRPC", cluster.grpc, error)
        # Bound now, served once the runtime runs: a busy port is reported before any
        # seed hears of us, and no check is answered by a node that is not running.
        if args.http is not None:
            try:
                http_socket = _listen_tcp(args.http)
            except OSError as error:
                return _cannot_bind("HTTP", args.http, error)
        if getattr(args, "resp", None) is not None:
            from meshlimit.cluster.daemon.resp import RespServer

            resp_server = RespServer(runtime)
            try:
                resp_addr = await resp_server.start(*args.resp, serve=False)
                resp_ready = f" resp={_format_addr(resp_addr)}"
            except OSError as error:
                return _cannot_bind("RESP", args.resp, error)
        try:
            await runtime.start(list(args.seed))
        except OSError as error:
            return _cannot_bind("UDP", bind, error)
        if http_socket is not None:
            # access_log=None: one line per check would drown the membership events.
            runner = HttpRunner(  # web.AppRunner, with POST /v1/check ahead of the app
                make_app(runtime, metrics=operator.registry),
                access_log=None,
                shutdown_timeout=HTTP_SHUTDOWN_S,
            )
            await runner.setup()
            await web.SockSite(runner, http_socket).start()
            http_socket = None  # the runner owns it now
            http_addr = _format_addr(runner.addresses[0])
        if resp_server is not None:
            await resp_server.serve()
        if envoy is not None:
            await envoy.serve(watch=operator.poll_interval_s > 0)
        stop = _install_signal_handlers()
        operator.start()
        udp_addr = _format_addr(config.addr)
        log.info(
            "node started",
            extra={
                "node": config.node_id,
                "udp": udp_addr,
                "bind": _format_addr(bind),
                "http": http_addr,
                "uvloop": uvloop,
                "ready": runtime.readiness()[1],
            },
        )
        print(
            f"meshlimit node ready id={config.node_id} udp={udp_addr} http={http_addr}"
            f"{resp_ready}{grpc_ready}",
            flush=True,
        )
        gc_policy.settle()  # startup's objects out of the collector's sight; see the module
        signum = await stop.get()
        log.info("draining", extra={"signal": signal.Signals(signum).name, "drain_s": DRAIN_S})
        runtime.leave()  # counts handed over, peers told; checks made now go to new owners
        if envoy is not None:
            await envoy.drain()  # gRPC health: NOT_SERVING
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.get(), DRAIN_S)  # a second signal ends the drain
        if runner is not None:
            await runner.cleanup()
            runner = None
        if resp_server is not None:
            await resp_server.close()  # commands already read are answered first
        if envoy is not None:
            await envoy.close(HTTP_SHUTDOWN_S)  # calls in flight are answered first
        await runtime.stop(leave=False)
        log.info("node stopped", extra={"node": config.node_id})
        return 0
    finally:
        await operator.stop()
        if http_socket is not None:
            http_socket.close()
        if runner is not None:
            await runner.cleanup()
        if resp_server is not None:
            await resp_server.close()  # idempotent
        if envoy is not None:
            await envoy.close(0)  # idempotent
        await runtime.stop(leave=False)  # idempotent: closes whatever is still open


def _listen_tcp(addr: Address) -> socket.socket:
    """A listening TCP socket on ``addr`` (a host name is resolved; IPv6 when the host
    is an IPv6 address), not yet served: aiohttp serves it later (``SockSite``)."""
    host, port = addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=128)
    sock.setblocking(False)
    return sock


class _Operator:
    """The operator's side of a running daemon: the config file's rules (applied at
    start, reloaded on SIGHUP and on change), ``/metrics``, and degraded-mode log lines."""

    def __init__(
        self,
        runtime: Runtime,
        config: DaemonConfig,
        flags: DaemonConfig,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        from meshlimit.cluster.daemon.http_api import metrics_registry

        self.runtime = runtime
        self.poll_interval_s = poll_interval_s
        if not runtime.node.config.cluster_keys:
            log.warning(
                "cluster traffic is NOT authenticated: anyone who can reach the cluster "
                "port can join, forge counts and change rules; give --cluster-key-file "
                "(docs/security.md)",
                extra={"udp": "{}:{}".format(*runtime.node.config.addr)},
            )
        # The default rule is in the node's config; tiers and clients go in as rule
        # writes, before the node joins, so that its first checks already use them.
        for key, error in apply_changes(runtime, start_changes(config)).items():
            log.warning("rule not applied", extra={"key": key, "error": error})
        self.reloader: Reloader | None = None
        if config.source is not None:
            self.reloader = Reloader(
                config.source, config, flags, runtime, poll_interval_s=poll_interval_s
            )
        reloads = self.reloader.results if self.reloader is not None else None
        self.registry = metrics_registry(runtime, reloads=reloads)
        self._tasks: list[asyncio.Task[None]] = []
        self.envoy: EnvoyFrontend | None = None
        """The Envoy front-end (``--grpc``): reloaded on SIGHUP too."""

    def start(self) -> None:
        """Install the SIGHUP handler and start the watch and report tasks."""
        from meshlimit.cluster.daemon.metrics import DEGRADED_LOG_INTERVAL_S, DegradedReporter

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.reloader is not None and self.poll_interval_s > 0:
            self._tasks.append(asyncio.create_task(self.reloader.watch()))
        reporter = DegradedReporter(self.runtime.node, interval_s=DEGRADED_LOG_INTERVAL_S)
        self._tasks.append(asyncio.create_task(_every(reporter.interval_s, reporter.step)))

    def _on_sighup(self) -> None:
        if self.envoy is not None:
            self.envoy.reload("sighup")
        if self.reloader is None:
            if self.envoy is None:
                log.info("SIGHUP ignored: no --config file to reload")
        else:
            self.reloader.reload("sighup")

    async def stop(self) -> None:
        """Cancel the tasks; idempotent."""
        with contextlib.suppress(RuntimeError):  # the loop may be closing
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


async def _every(interval_s: float, step: Callable[[], object]) -> None:
    """Call ``step`` every ``interval_s`` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        step()


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
