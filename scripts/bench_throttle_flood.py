#!/usr/bin/env python3
"""Benchmark: the rule registry's memory per entry, and a flood of distinct CL.THROTTLE keys.

    .venv/bin/python scripts/bench_throttle_flood.py [--keys N] [--quick] [--json FILE]

Method (the output header says it again):

- Memory per entry: in a fresh child process each, a sans-IO cluster ``Node`` (preset
  ``sim``, alone) takes 300,000 (``--quick``: 100,000) registry entries of one kind:
  ``override`` (``client:ID`` rules written here, as ``PUT /v1/rules`` does),
  ``per-call`` (``client:cl.throttle:KEY`` written here, as ``CL.THROTTLE`` does) and
  ``per-call from a peer`` (the same, arriving as ``RuleEntries`` datagrams' messages
  through rule sync, each stamp's node id a string of its own, as decoded). Bytes per
  entry = growth of ``VmRSS`` (after ``gc.collect()``) / entries.
- Flood: a child process starts a ``Runtime`` (preset ``local``, one node on a free
  loopback UDP port, so every check is decided by its owner) and runs ``CL.THROTTLE``
  commands through the RESP front-end's command layer (``RespCommands.execute``, no
  socket: the RESP parser is not what is measured), yielding to the event loop every
  1,000 commands so that the node's timers (and the registry's collection) run. N
  distinct keys (``--keys``, default 2,000,000; ``--quick`` 300,000), each called once
  as ``CL.THROTTLE flood:I 15 30 60`` (redis-cell's README example, capacity 16).
  Every 20,000 flood keys a new legit key is called 17 times in a row: the first 16
  must be allowed and the 17th limited. After the flood, 1,000 new keys are judged the
  same way. The registry keeps at most ``throttle_registry_share`` (500,000) per-call
  entries, the production default. Figures: RSS before, every 250,000 keys, after and
  peak (``VmHWM``); registry and counter-table sizes; evictions; keys/s.
- Collection: a third child floods 300,000 (``--quick`` 100,000) keys of
  ``CL.THROTTLE gone:I 0 1 1`` (one a second, drained after 2 s) with the per-call
  lifetime floor lowered from 10 minutes to 5 s, then lets the node run until every
  per-call entry has been collected (at most 60 s): the time that took and the RSS;
  then floods as many new keys again, to show the freed memory is reused.
- Verdicts: ``legit`` passes when every judged key got exactly 16 allowed then one
  limited; ``bounded`` when the per-call entries never exceeded the share;
  ``collected`` when the third child ended with no per-call entry left.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from collections import Counter
from typing import Any

from harness.proc import status_kib
from harness.processes import run_json_child
from harness.report import command_line, doc_section, write_json

THROTTLE = (b"15", b"30", b"60")  # capacity 16, one every 2 s
LEGIT_EVERY = 20_000
AFTER_KEYS = 1_000
SHARE = 500_000
REPORT_EVERY = 250_000


def rss() -> int:
    """VmRSS in bytes."""
    return status_kib("self", ("VmRSS",))["VmRSS"] * 1024


def peak() -> int:
    """VmHWM in bytes."""
    return status_kib("self", ("VmHWM",))["VmHWM"] * 1024


# --- memory per entry -----------------------------------------------------------------


def entry_child(kind: str, entries: int) -> dict[str, Any]:
    from meshlimit.cluster.node import Node
    from meshlimit.cluster.node.config import NodeConfig
    from meshlimit.cluster.wire.messages import RuleEntries, RuleEntry

    now = 1_700_000_000 * 10**9
    config = NodeConfig.preset("sim", "a", ("a", 1), default_rule="100/minute")
    node = Node(config, random.Random(0), now_ns=now)
    node.registry.max_calls = entries
    rule = "1/2s burst 15 algo token_bucket"
    gc.collect()
    before = rss()
    for i in range(entries):
        if kind == "override":
            node.set_rule(f"client:key{i:08d}", rule, now_ns=now)
        elif kind == "per-call":
            node.set_rule(f"client:cl.throttle:key{i:08d}", rule, now_ns=now)
        else:  # from a peer: a decoded message, with a node id string of its own
            peer = "".join(("peer-", "b"))
            entry = RuleEntry(f"client:cl.throttle:key{i:08d}", rule, (now // 10**6, i, peer))
            node.rules.on_entries(RuleEntries((entry,)), now)
    gc.collect()
    held = node.registry.entry_count() - 1 + node.registry.call_count()
    assert held == entries, (kind, held)
    return {"kind": kind, "entries": entries, "bytes_per_entry": (rss() - before) / entries}


# --- the flood ------------------------------------------------------------------------


def flood_child(keys: int) -> dict[str, Any]:
    return asyncio.run(_flood(keys))


async def _flood(keys: int) -> dict[str, Any]:
    from meshlimit.cluster.daemon.resp_commands import RespCommands
    from meshlimit.cluster.node.config import NodeConfig
    from meshlimit.cluster.runtime import Runtime
    from meshlimit.processes import free_port

    config = NodeConfig.preset("local", "a", ("127.0.0.1", free_port()))
    runtime = Runtime(config, seed=1)
    await runtime.start([])
    try:
        stats: Counter[str] = Counter()
        commands = RespCommands(
            runtime, stats, throttle_registry_share=SHARE, rule_spread_wait_s=0.05
        )
        registry, counters = runtime.node.registry, runtime.node.counters
        gc.collect()
        before = rss()
        samples, most_calls, legit = [], 0, Counter[str]()
        start = time.perf_counter()
        for i in range(keys):
            commands.execute([b"CL.THROTTLE", b"flood:%d" % i, *THROTTLE])
            if i % 1000 == 999:
                await asyncio.sleep(0)
                most_calls = max(most_calls, registry.call_count())
            if i % LEGIT_EVERY == 0:
                legit[await judge(commands, b"legit:%d" % i)] += 1
            if (i + 1) % REPORT_EVERY == 0 or i + 1 == keys:
                sample = {
                    "keys": i + 1,
                    "rss": rss(),
                    "calls": registry.call_count(),
                    "counters": len(counters),
                    "keys_per_s": (i + 1) / (time.perf_counter() - start),
                }
                samples.append(sample)
                print(
                    f"  {i + 1:>9,} keys: RSS {sample['rss'] / 2**20:6,.0f} MiB, "
                    f"{sample['calls']:,} per-call entries, {sample['counters']:,} counters, "
                    f"{sample['keys_per_s']:,.0f} keys/s",
                    file=sys.stderr,
                    flush=True,
                )
        seconds = time.perf_counter() - start
        after_flood = Counter[str]()
        for n in range(AFTER_KEYS):
            after_flood[await judge(commands, b"after:%d" % n)] += 1
        return {
            "keys": keys,
            "seconds": seconds,
            "keys_per_s": keys / seconds,
            "rss_before": before,
            "rss_after": rss(),
            "rss_peak": peak(),
            "samples": samples,
            "share": SHARE,
            "most_per_call_entries": max(most_calls, registry.call_count()),
            "per_call_entries": registry.call_count(),
            "durable_entries": registry.entry_count(),
            "registry": dict(registry.stats),
            "counters": len(counters),
            "counters_evicted_live": counters.evicted_live,
            "resp": {k: v for k, v in stats.items() if k.startswith("throttle")},
            "legit_during": dict(legit),
            "legit_after": dict(after_flood),
        }
    finally:
        await runtime.stop(leave=False)


async def judge(commands: Any, key: bytes) -> str:
    """Call a new key 17 times: ``ok`` if the first 16 are allowed and the 17th limited."""
    limited = []
    for _ in range(17):
        reply = commands.execute([b"CL.THROTTLE", key, *THROTTLE])
        if isinstance(reply, asyncio.Future):
            reply = await reply
        if not reply.startswith(b"*5\r\n:"):
            return "error"
        limited.append(reply[5:6] == b"1")
    return "ok" if limited == [False] * 16 + [True] else "wrong"


# --- collection -----------------------------------------------------------------------


def collect_child(keys: int) -> dict[str, Any]:
    return asyncio.run(_collect(keys))


async def _collect(keys: int) -> dict[str, Any]:
    from meshlimit.cluster.daemon.resp_commands import RespCommands
    from meshlimit.cluster.daemon.throttle import throttle_rule
    from meshlimit.cluster.node.config import NodeConfig
    from meshlimit.cluster.runtime import Runtime
    from meshlimit.processes import free_port

    config = NodeConfig.preset("local", "a", ("127.0.0.1", free_port()))
    runtime = Runtime(config, seed=1)
    await runtime.start([])
    try:
        registry = runtime.node.registry
        registry.call_lifetime_floor_ms = 5_000
        commands = RespCommands(
            runtime, Counter(), throttle_registry_share=SHARE, rule_spread_wait_s=0.05
        )
        gc.collect()
        before = rss()
        for i in range(keys):
            commands.execute([b"CL.THROTTLE", b"gone:%d" % i, b"0", b"1", b"1"])
            if i % 1000 == 999:
                await asyncio.sleep(0)
        flooded, at_end = time.perf_counter(), rss()
        calls_at_end = registry.call_count()
        while registry.call_count() and time.perf_counter() - flooded < 60:
            await asyncio.sleep(0.1)
        seconds, calls_left = time.perf_counter() - flooded, registry.call_count()
        gc.collect()
        collected = rss()
        # The same flood again: the memory the first one left (Python keeps it) is reused.
        for i in range(keys):
            commands.execute([b"CL.THROTTLE", b"again:%d" % i, b"0", b"1", b"1"])
            if i % 1000 == 999:
                await asyncio.sleep(0)
        return {
            "keys": keys,
            "lifetime_ms": registry.call_lifetime_ms(throttle_rule(0, 1, 1)),
            "rss_before": before,
            "rss_at_flood_end": at_end,
            "calls_at_flood_end": calls_at_end,
            "seconds_to_collect": seconds,
            "calls_left": calls_left,
            "rss_after_collection": collected,
            "rss_after_second_flood": rss(),
            "registry": dict(registry.stats),
        }
    finally:
        await runtime.stop(leave=False)


# --- the parent -----------------------------------------------------------------------


def child(argv: list[str]) -> dict[str, Any]:
    return run_json_child(
        [sys.executable, __file__, "--child", *argv], argv[0], capture_stderr=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2_000_000, help="distinct flood keys")
    parser.add_argument("--quick", action="store_true", help="300,000 keys, smaller samples")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "entry":
            result = entry_child(rest[0], int(rest[1]))
        elif kind == "flood":
            result = flood_child(int(rest[0]))
        else:
            result = collect_child(int(rest[0]))
        print(json.dumps(result))
        return
    keys = 300_000 if args.quick else args.keys
    entries = 100_000 if args.quick else 300_000
    print(command_line("bench_throttle_flood.py"))
    print("method:" + doc_section(__doc__, "Method (the output header says it again):\n"))
    memory = [child(["entry", kind, str(entries)]) for kind in ("override", "per-call", "peer")]
    print(f"memory per registry entry ({entries:,} entries, RSS growth / entries):")
    for row in memory:
        name = "per-call from a peer" if row["kind"] == "peer" else row["kind"]
        print(f"  {name:<22} {row['bytes_per_entry']:6.0f} B")
    print(f"flood: {keys:,} distinct keys 'CL.THROTTLE flood:I 15 30 60', share {SHARE:,}")
    flood = child(["flood", str(keys)])
    mib = 2**20
    print(
        f"  {flood['keys_per_s']:,.0f} keys/s; RSS {flood['rss_before'] / mib:,.0f} -> "
        f"{flood['rss_after'] / mib:,.0f} MiB (peak {flood['rss_peak'] / mib:,.0f}); "
        f"per-call entries at most {flood['most_per_call_entries']:,}, now "
        f"{flood['per_call_entries']:,}; counters {flood['counters']:,}"
    )
    print(f"  registry: {flood['registry']}; RESP: {flood['resp']}")
    print(f"  legit keys during the flood: {flood['legit_during']}; after: {flood['legit_after']}")
    gone_keys = 100_000 if args.quick else 300_000
    collect = child(["collect", str(gone_keys)])
    print(
        f"collection: {gone_keys:,} keys 'CL.THROTTLE gone:I 0 1 1', lifetime "
        f"{collect['lifetime_ms']:,} ms: {collect['calls_at_flood_end']:,} entries at the "
        f"flood's end, {collect['calls_left']:,} left {collect['seconds_to_collect']:.1f} s "
        f"later; RSS {collect['rss_at_flood_end'] / mib:,.0f} -> "
        f"{collect['rss_after_collection'] / mib:,.0f} MiB (Python keeps freed memory), "
        f"{collect['rss_after_second_flood'] / mib:,.0f} MiB after the same flood again"
    )
    judged = Counter(flood["legit_during"]) + Counter(flood["legit_after"])
    verdicts = {
        "legit": set(judged) == {"ok"},
        "bounded": flood["most_per_call_entries"] <= SHARE,
        "collected": collect["calls_left"] == 0,
    }
    print("verdicts: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in verdicts.items()))
    if args.json:
        write_json(args.json, {"memory": memory, "flood": flood, "collect": collect})
    if not all(verdicts.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
