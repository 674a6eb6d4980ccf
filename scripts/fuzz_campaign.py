#!/usr/bin/env python3
"""A coverage-guided fuzz campaign over every parser a peer or a caller can reach.

    .venv/bin/pip install atheris      # once: not a project dependency
    .venv/bin/python scripts/fuzz_campaign.py [--target NAME|all] [--seconds N] [--out DIR]
    .venv/bin/python scripts/fuzz_campaign.py --reproduce TARGET FILE

Method (the output header says it again):

- Engine: atheris (libFuzzer for Python). Only ``meshlimit`` modules are
  instrumented, plus the codec's decoders, which are generated at run time
  (``cluster/wire/codec.py``) and so escape the import hook; ``cov``/``ft`` below
  are libFuzzer's edge and feature counts over that code.
- Isolation: each target fuzzes in its own subprocess (atheris takes the
  process over); a child that dies (hard crash, OOM, timeout) is restarted
  with the time left and the corpus it grew, at most 20 times. A child's
  address space is capped at 4 GiB, so an input that makes the code allocate
  gigabytes fails at once with ``MemoryError`` (a finding) instead of timing out.
- Seeds: valid inputs written to ``OUT/TARGET/corpus`` first: encoded
  envelopes of every message type (from ``codec.encode``), rule strings, RESP
  commands, sealed datagrams, JSON bodies. The msgpack targets (codec, node)
  also get a structure-aware mutator: half of the mutations unpack the
  datagram, change one value (boundary ints, bound-length strings, a subtree
  from another seed, a type swap) and repack it; the other half are
  libFuzzer's byte mutations.
- Oracles, per target (anything else that escapes is a finding too):

  codec  ``decode(data)`` raises only ``DecodeError``, never reason
         ``internal`` (the safety net caught a bug), and what it returns
         re-encodes to an equal envelope.
  rules  ``parse_rule(data.decode("utf-8", "replace"))`` raises only
         ``ValueError``; a parsed rule's ``str`` parses back to an equal rule.
  resp   The bytes go to ``_Connection.data_received`` (a fake transport and
         a fake runtime whose checks are deterministic, some decided later
         by the loop as forwarded ones are), whole and again in small chunks
         on a fresh server: no exception may escape a callback or reach the
         loop's handler, no ``-ERR internal error``, the connection closes
         after EOF, and both feeds give the same replies (protocol errors
         compared by kind: which bound is seen first may differ).
  auth   ``Guard.open`` on up to 8 datagrams (raw bytes, or sealed under a
         keyring key with fuzzer-chosen boot, seq and clocks) returns None or
         bytes, never raises, and never accepts the same datagram twice while
         time goes forward.
  node   A sans-IO ``Node`` (``sim`` preset, ``a``) receives the datagrams
         (split on ``SEP``) from ``("b", 1)``, checks a few clients and ticks
         after each one: nothing escapes, the node swallows no error other
         than ``ValueError`` in its dispatch (a ``TypeError`` there is
         garbage the decoder let through), and every datagram it sends
         decodes.
  http   The JSON body validation of ``cluster/daemon/http_api.py`` (``_json_object``
         on a fake request, ``_refuse_unknown``, ``_client``, ``_cost``,
         ``_rule_value``), then the node call and the JSON answer, as the
         check and put-rule handlers do: only ``BadRequest`` (a 400) or the
         node's ``ValueError`` (turned into one) may come out.

- Findings: each distinct one (exception type and the innermost frame in
  meshlimit) is written once to ``OUT/TARGET/findings/`` as ``ID.txt`` (the
  traceback, the input in hex, how often it recurred) and ``ID.bin``; the
  campaign goes on after a finding. ``--reproduce TARGET FILE`` runs one input
  through the same harness without atheris and prints what it finds.

This is a script, not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from fuzzing.child import run_child
from fuzzing.common import MAX_RESTARTS, TARGETS, fingerprint
from fuzzing.oracles import harness_for
from fuzzing.seeds import DICTIONARY, SEEDS
from harness.report import doc_section, write_json


def _dictionary_line(token: str) -> str:
    escaped = "".join(
        c if 32 <= ord(c) < 127 and c not in '"\\' else "".join(f"\\x{b:02x}" for b in c.encode())
        for c in token
    )
    return f'"{escaped}"'


def _parse_log(text: str) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for name, value in re.findall(r"stat::(\w+):\s+(\d+)", text):
        stats[name] = int(value)
    inited = re.search(r"INITED cov: (\d+) ft: (\d+)", text)
    if inited:
        stats.update(seed_cov=int(inited[1]), seed_ft=int(inited[2]))
    status = re.findall(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    if status:
        runs, cov, ft, corp = status[-1]
        stats.update(last_runs=int(runs), cov=int(cov), ft=int(ft), corpus=int(corp))
    return stats


def fuzz_target(target: str, seconds: int, out: Path) -> dict[str, Any]:
    work = out / target
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for seed in seeds:
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
    if target in DICTIONARY:
        lines = [_dictionary_line(t) for t in DICTIONARY[target]]
        (work / "dictionary.txt").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    totals: dict[str, Any] = {"executions": 0, "children": 0, "exits": []}
    seed_cov = None
    last: dict[str, Any] = {}
    log_path = work / "fuzz.log"
    with open(log_path, "w") as log:
        while True:
            left = int(seconds - (time.monotonic() - started))
            if left < 5 or totals["children"] > MAX_RESTARTS:
                break
            command = [
                sys.executable,
                __file__,
                "--child",
                target,
                "--corpus",
                str(corpus),
                "--work",
                str(work),
                "--seconds",
                str(left),
            ]
            log.write(f"\n### child {totals['children']}: {' '.join(command)}\n")
            log.flush()
            start = log.tell()
            code = subprocess.run(command, stdout=log, stderr=log, check=False).returncode
            log.flush()
            totals["children"] += 1
            totals["exits"].append(code)
            with open(log_path) as reader:
                reader.seek(start)
                last = _parse_log(reader.read())
            totals["executions"] += last.get("number_of_executed_units", last.get("last_runs", 0))
            if seed_cov is None:
                seed_cov = last.get("seed_cov")
            if code == 0:
                break
    elapsed = time.monotonic() - started
    counts_path = work / "finding_counts.json"
    counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    findings = []
    for key, count in sorted(counts.items()):
        text = (work / "findings" / f"{key}.txt").read_text()
        findings.append(
            {
                "id": key,
                "count": count,
                "signature": text.splitlines()[0][11:],
                "file": str(work / "findings" / f"{key}.txt"),
            }
        )
    artifacts = sorted(
        str(p)
        for p in work.glob("*-*")
        if p.name.split("-")[0] in ("crash", "oom", "timeout", "leak", "slow")
    )
    return {
        "target": target,
        "seconds": round(elapsed, 1),
        "seeds": len(seeds),
        "executions": totals["executions"],
        "exec_per_s": round(totals["executions"] / elapsed) if elapsed else 0,
        "seed_cov": seed_cov,
        "cov": last.get("cov"),
        "ft": last.get("ft"),
        "corpus": last.get("corpus"),
        "peak_rss_mb": last.get("peak_rss_mb"),
        "children": totals["children"],
        "exit_codes": totals["exits"],
        "findings": findings,
        "artifacts": artifacts,
        "log": str(log_path),
    }


def reproduce(target: str, path: Path) -> int:
    data = path.read_bytes()
    try:
        harness_for(target)(data)
    except Exception as error:
        traceback.print_exception(error)
        print(f"\nFINDING: {fingerprint(error)}")
        return 1
    print("no finding")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="all", choices=("all", *TARGETS))
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--out", type=Path, help="work directory (default: a new temp dir)")
    parser.add_argument("--reproduce", nargs=2, metavar=("TARGET", "FILE"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.corpus, args.work, args.seconds)
        return 0
    if args.reproduce:
        return reproduce(args.reproduce[0], Path(args.reproduce[1]))
    try:
        import atheris  # noqa: F401
    except ImportError:
        sys.exit("atheris is not installed: .venv/bin/pip install atheris")
    out = args.out or Path(tempfile.mkdtemp(prefix="meshlimit-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    targets = TARGETS if args.target == "all" else (args.target,)
    print(doc_section(__doc__, "Method (the output header says it again):", "This is a"))
    print(f"targets: {', '.join(targets)}; {args.seconds} s each; work dir {out}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores\n", flush=True)
    results = []
    for target in targets:
        print(f"--- {target}: fuzzing for {args.seconds} s ...", flush=True)
        result = fuzz_target(target, args.seconds, out)
        results.append(result)
        print(
            f"    {result['executions']:,} executions, {result['exec_per_s']:,}/s, "
            f"cov {result['seed_cov']} (seeds) -> {result['cov']} ft {result['ft']}, corpus {result['corpus']} "
            f"(from {result['seeds']} seeds), children {result['children']} "
            f"exit {result['exit_codes']}",
            flush=True,
        )
        for finding in result["findings"]:
            print(
                f"    FINDING {finding['id']} x{finding['count']}: {finding['signature']}\n"
                f"            {finding['file']}"
            )
        for artifact in result["artifacts"]:
            print(f"    libFuzzer artifact: {artifact}")
    write_json(out / "summary.json", results, indent=2)
    print(
        f"\n{'target':8} {'executions':>12} {'exec/s':>8} {'cov':>6} {'ft':>6} {'corpus':>7}"
        f"  findings"
    )
    for r in results:
        names = ", ".join(f"{f['signature']} (x{f['count']})" for f in r["findings"]) or "none"
        names += "".join(f"; artifact {Path(a).name}" for a in r["artifacts"])
        print(
            f"{r['target']:8} {r['executions']:>12,} {r['exec_per_s']:>8,} {r['cov']!s:>6} "
            f"{r['ft']!s:>6} {r['corpus']!s:>7}  {names}"
        )
    print(f"\nsummary: {out / 'summary.json'}")
    return 1 if any(r["findings"] or r["artifacts"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
