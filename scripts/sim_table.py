"""Run every shipped simulator scenario with its own seed and print the Markdown table
that docs/design.md and docs/simulator.md quote (one row per scenario).

    .venv/bin/python scripts/sim_table.py
"""

from __future__ import annotations

import argparse
import time

from meshlimit.sim.cli import shipped_scenarios
from meshlimit.sim.runner import run_scenario
from meshlimit.sim.scenario import load_scenario


def _fmt_detection(d: dict) -> str:
    return "—" if not d.get("count") else f"{d['median']:.1f} s"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print(
        "| scenario | nodes, mode | peak admitted/capacity | owner / forwarded / local / degraded"
        " | under-admission (healthy) | detection (median) | false suspicions | violations |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, path in sorted(shipped_scenarios().items()):
        scenario = load_scenario(path)
        result = run_scenario(scenario, scenario.seed or 1, stopwatch=time.perf_counter)
        s = result.summary
        paths = s["answers_by_path"]
        by_path = " / ".join(
            str(paths.get(p, 0)) for p in ("owner", "forwarded", "local", "degraded")
        )
        under = s.get("under_admissions_healthy", "—")
        print(
            f"| `{name}` | {s['nodes']}, {s['mode']} | {s['peak_ratio']:.2f} | {by_path} | {under}"
            f" | {_fmt_detection(s['detection_s'])} | {s['false_suspicions']}"
            f" | {len(result.violations)} |"
        )


if __name__ == "__main__":
    main()
