"""The ``meshlimit`` command line.

Each subcommand is one :class:`Command`: a name, a one-line help, a function
that adds its arguments to an ``argparse`` subparser, and a function that runs
it and returns the exit code. To add a subcommand, write those two functions
(next to the code they drive) and append a ``Command`` to :data:`COMMANDS`.
A command's ``run`` imports what it drives lazily, so ``meshlimit --help``
stays fast and never pulls in the asyncio runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand of ``meshlimit``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    """``meshlimit demo [--local]``."""
    parser.add_argument(
        "--local",
        action="store_true",
        help="the in-process limiter on virtual time instead of a three-node cluster",
    )


def _demo_run(args: argparse.Namespace) -> int:
    if args.local:
        from meshlimit import demo_local

        demo_local.run(out=sys.stdout)
        return 0
    from meshlimit import demo_cluster

    return demo_cluster.run(out=sys.stdout)


def _node_arguments(parser: argparse.ArgumentParser) -> None:
    import meshlimit.cluster.daemon.main as daemon

    daemon.add_arguments(parser)


#: What ``meshlimit node`` needs beyond the library: the ``daemon`` extra.
DAEMON_MODULES = ("aiohttp", "prometheus_client", "hiredis")


def missing_daemon_modules() -> list[str]:
    """The daemon extra's modules that cannot be imported here."""
    import importlib

    missing = []
    for name in DAEMON_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _node_run(args: argparse.Namespace) -> int:
    missing = missing_daemon_modules()
    if missing:
        print(
            f"meshlimit node: needs {', '.join(missing)}: pip install 'meshlimit[daemon]'",
            file=sys.stderr,
        )
        return 1
    import meshlimit.cluster.daemon.main as daemon

    return daemon.run_daemon(args)


def _ctl_arguments(parser: argparse.ArgumentParser) -> None:
    import meshlimit.cluster.daemon.ctl as ctl

    ctl.add_arguments(parser)


def _ctl_run(args: argparse.Namespace) -> int:
    import meshlimit.cluster.daemon.ctl as ctl

    return ctl.run_ctl(args)


def _sim_arguments(parser: argparse.ArgumentParser) -> None:
    from meshlimit.sim import cli as sim_cli

    sim_cli.add_arguments(parser)


def _sim_run(args: argparse.Namespace) -> int:
    from meshlimit.sim import cli as sim_cli

    return sim_cli.run_sim(args)


COMMANDS: list[Command] = [
    Command(
        "demo",
        "run a three-node cluster on loopback, crash a node, and print what happened",
        _demo_arguments,
        _demo_run,
    ),
    Command(
        "node",
        "run a cluster node until SIGTERM/SIGINT, then leave gracefully",
        _node_arguments,
        _node_run,
    ),
    Command(
        "ctl",
        "inspect and steer a running node over its HTTP API",
        _ctl_arguments,
        _ctl_run,
    ),
    Command(
        "sim",
        "run the deterministic simulator: a scenario, or swarm fuzzing with --fuzz",
        _sim_arguments,
        _sim_run,
    ),
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshlimit")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="meshlimit",
        description="Distributed rate limiter: a peer-to-peer cluster with CRDT counters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except BrokenPipeError:
        # Output piped into e.g. `head`, which exited early: no traceback. Point stdout
        # at devnull so the flush at interpreter exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
