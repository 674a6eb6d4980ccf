"""Digest every shipped scenario's full decision trace at fixed seeds.

A refactoring that claims "behaviour unchanged" proves it here: run this before and
after, and the two outputs must be identical. Each line hashes, for one scenario and
seed, the world's event trace (every datagram's bytes, in order), every node's decision
log (time, client, rule, cost, verdict, path) and the checkers' violations.

    .venv/bin/python scripts/trace_digests.py > before.txt
    ... change the code ...
    .venv/bin/python scripts/trace_digests.py | diff before.txt -
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

from meshlimit.cluster.node import Node
from meshlimit.sim.runner import SCENARIO_DIR, fuzz_scenario, fuzz_seed, run_scenario
from meshlimit.sim.scenario import load_scenario


class _HashedLog(list):  # type: ignore[type-arg]
    """A decision log that also feeds every entry to a running hash."""

    def __init__(self, hasher: Any, name: str) -> None:
        super().__init__()
        self._hasher = hasher
        self._name = name

    def append(self, entry: Any) -> None:
        self._hasher.update(repr((self._name, entry)).encode())
        super().append(entry)


def digest_run(scenario: Any, seed: int) -> str:
    """One run's digest: event trace, every decision, every violation."""
    hasher = hashlib.blake2b(digest_size=16)

    def plant(node: Node) -> None:
        node.decision_log = _HashedLog(hasher, node.node_id)

    result = run_scenario(scenario, seed, plant=plant)
    hasher.update(result.digest.encode())
    hasher.update(repr(result.violations).encode())
    return hasher.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per shipped scenario")
    parser.add_argument("--fuzz", type=int, default=10, help="fuzz runs (base seed 7)")
    args = parser.parse_args()
    for path in sorted(SCENARIO_DIR.glob("*.toml")):
        scenario = load_scenario(path)
        for seed in range(1, args.seeds + 1):
            print(f"{path.stem} seed={seed} {digest_run(scenario, seed)}", flush=True)
    for index in range(args.fuzz):
        seed = fuzz_seed(7, index)
        print(f"fuzz seed={seed} {digest_run(fuzz_scenario(seed), seed)}", flush=True)


if __name__ == "__main__":
    main()
