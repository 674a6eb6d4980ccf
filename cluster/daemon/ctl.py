"""``meshlimit ctl``: inspect and steer a running node over its HTTP API.

Standard library only (``urllib.request``), so it runs anywhere Python
does. Exit codes: 0 when the node answered the request, 1 when it refused it
(its error message is printed), 2 when the node could not be reached. A
check that the node *decided* is a success whatever the decision; the
decision is in the output.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

#: A node answers within its forward timeout (at most a second); this leaves room.
TIMEOUT_S = 5.0
#: Largest answer read from a node; a status of a 1,000-member cluster fits easily.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class CtlError(Exception):
    """The node refused a request (exit 1) or could not be reached (exit 2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- arguments ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags and verbs of ``meshlimit ctl``."""
    from meshlimit.cluster.wire.addresses import parse_address

    def address(text: str) -> tuple[str, int]:
        try:
            return parse_address(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument(
        "--http", required=True, type=address, metavar="HOST:PORT", help="the node's HTTP API"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("status", help="members, ring shares, clock offsets and counters")
    check = verbs.add_parser("check", help="check (and count) one request for a client")
    check.add_argument("client")
    check.add_argument("--cost", type=int, default=1, help="units to spend (default: 1)")
    get = verbs.add_parser("get-rule", help="the rule in force for a client, and its source")
    get.add_argument("client")
    put = verbs.add_parser(
        "set-rule", help="give a client a rule ('100/minute') or a tier ('@gold')"
    )
    put.add_argument("client")
    put.add_argument("rule")
    remove = verbs.add_parser("remove-rule", help="drop a client's own rule")
    remove.add_argument("client")
    reset = verbs.add_parser("reset", help="forget a client's counts, cluster-wide")
    reset.add_argument("client")
    forget = verbs.add_parser(
        "forget", help="remove a dead member for good: it stops counting toward the majority"
    )
    forget.add_argument("node")


def run_ctl(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one verb against the node; print its answer; return the exit code."""
    out = sys.stdout if out is None else out
    base = _base_url(args.http)
    client = getattr(args, "client", "")
    try:
        client_path = "/v1/rules/" + urllib.parse.quote(client, safe="")
    except UnicodeEncodeError:  # bytes in argv that are not UTF-8
        print(f"meshlimit ctl: client id {client!r} is not valid UTF-8", file=sys.stderr)
        return 2
    try:
        if args.verb == "status":
            out.write(format_status(request(base, "GET", "/v1/cluster")))
        elif args.verb == "check":
            body = {"client": args.client, "cost": args.cost}
            out.write(format_decision(request(base, "POST", "/v1/check", body)))
        elif args.verb == "get-rule":
            out.write(format_rule(request(base, "GET", client_path)))
        elif args.verb == "set-rule":
            out.write(format_rule(request(base, "PUT", client_path, {"rule": args.rule})))
        elif args.verb == "remove-rule":
            out.write(format_rule(request(base, "DELETE", client_path)))
        elif args.verb == "reset":
            counters_path = "/v1/counters/" + urllib.parse.quote(client, safe="")
            request(base, "DELETE", counters_path)
            out.write(f"counts of {client} reset on every node\n")
        elif args.verb == "forget":
            member_path = "/v1/members/" + urllib.parse.quote(args.node, safe="")
            answer = request(base, "DELETE", member_path)
            out.write(f"{answer.get('message', f'{args.node} forgotten')}\n")
        else:  # pragma: no cover - argparse allows only the verbs above
            raise AssertionError(args.verb)
    except CtlError as error:
        print(f"meshlimit ctl: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # a tool's user gets one line, never a traceback
        print(f"meshlimit ctl: unexpected {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


# --- talking to the node --------------------------------------------------------------


def _base_url(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# A control tool talks to the node it is pointed at: never through an HTTP proxy
# that the environment (http_proxy) happens to name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(base: str, method: str, path: str, body: object = None) -> dict[str, Any]:
    """One JSON request; :class:`CtlError` with exit code 1 (refused) or 2 (unreachable)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=TIMEOUT_S) as response:
            return _decode(response.read(MAX_RESPONSE_BYTES), base)
    except urllib.error.HTTPError as error:
        with error:
            message = _error_message(error.read(MAX_RESPONSE_BYTES), error.code)
        raise CtlError(f"{method} {path} failed: {message}", 1) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, socket.timeout | TimeoutError):
            reason = f"no answer within {TIMEOUT_S:g} s"
        raise CtlError(f"cannot reach the node at {base}: {reason}", 2) from None
    except http.client.HTTPException as error:  # not HTTP: a wrong port, say
        what = type(error).__name__
        raise CtlError(
            f"{base} did not answer in HTTP ({what}): is it the --http port?", 2
        ) from None


def _decode(raw: bytes, base: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise CtlError(f"{base} answered with something that is not JSON", 2) from None
    if not isinstance(value, dict):
        raise CtlError(f"{base} answered with JSON that is not an object", 2)
    return value


def _error_message(raw: bytes, status: int) -> str:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return f"{value['error']} (HTTP {status})"
    return f"HTTP {status}"


# --- formatting -----------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Fixed-width columns: text left-aligned, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)]) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_status(status: dict[str, Any]) -> str:
    """``/v1/cluster`` as a summary line and three tables."""
    me = status.get("node")
    members = status.get("members", [])
    alive = sum(1 for m in members if m.get("state") == "alive")
    rules = status.get("rules", {})
    ring = status.get("ring", {})
    offsets = status.get("clock_offsets_ms", {})
    head = (
        f"node {me}  addr {status.get('addr')}  mode {status.get('mode')}  "
        f"members {alive}/{len(members)} alive  pending forwards {status.get('pending_forwards')}\n"
        f"{_readiness(status)}"
        f"rules: default {rules.get('default')}, {rules.get('clients', 0)} client overrides, "
        f"{rules.get('tiers', 0)} tiers ({rules.get('entries', 0)} entries)\n\n"
    )
    rows = [
        (
            f"{m.get('node')}{' *' if m.get('node') == me else ''}",
            m.get("addr"),
            m.get("state"),
            m.get("incarnation"),
            round(100 * ring[m["node"]], 1) if m.get("node") in ring else None,
            0.0 if m.get("node") == me else offsets.get(m.get("node")),
            m.get("rtt_ms"),
        )
        for m in members
    ]
    members_table = table(
        ("NODE", "ADDR", "STATE", "INCARNATION", "RING %", "CLOCK OFFSET ms", "RTT ms"), rows
    )
    stats = sorted(status.get("stats", {}).items())
    dropped = sorted((k, v) for k, v in status.get("dropped", {}).items() if v)
    text = head + members_table
    text += "\n" + table(("STAT", "COUNT"), stats) if stats else ""
    text += "\n" + table(("DROPPED", "COUNT"), dropped) if dropped else "\nnothing dropped\n"
    return text


def _readiness(status: dict[str, Any]) -> str:
    """One line: ready, or why not (``/v1/cluster``'s ``ready`` and ``readiness``)."""
    if "ready" not in status:
        return ""  # a node from before readiness
    if status["ready"]:
        return "ready\n"
    return f"NOT READY: {status.get('readiness')}\n"


def format_decision(decision: dict[str, Any]) -> str:
    """A check's answer as one table row."""
    retry = decision.get("retry_after")
    row = (
        decision.get("allowed"),
        decision.get("limit"),
        decision.get("remaining"),
        decision.get("reset_after"),
        "never" if retry == -1 else retry,
        decision.get("path"),
    )
    return table(("ALLOWED", "LIMIT", "REMAINING", "RESET s", "RETRY s", "PATH"), [row])


def format_rule(rule: dict[str, Any]) -> str:
    """A client's rule and where it comes from."""
    return table(
        ("CLIENT", "RULE", "SOURCE"), [(rule.get("client"), rule.get("rule"), rule.get("source"))]
    )
