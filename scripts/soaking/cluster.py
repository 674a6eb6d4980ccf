"""The soak's cluster: its rules, its readiness checks, and the faults done to it.

:func:`run_faults` is the fault loop: every 20-40 s (seeded) it kills a node with SIGKILL,
restarts it on the same ports 5-10 s later seeded with the other two, and waits until
every node sees three alive members before the next kill; none starts in the last 25 s.
"""

from __future__ import annotations

import http.client
import random
import time
from pathlib import Path

from harness.processes import NodeProcess, wait_for

from meshlimit.core.rules import Rule, parse_rule
from soaking.state import (
    KILL_EVERY_S,
    QUIET_END_S,
    REJOIN_TIMEOUT_S,
    RESTART_AFTER_S,
    Fault,
    Shared,
)

#: Tier name -> rule; three clients per tier.
TIERS = {
    "sw": "20/2s",
    "swb": "30/5s burst 10",
    "fwb": "25/3s algo fixed_window burst 5",
    "tbb": "8/s algo token_bucket burst 4",
}
CLIENTS_PER_TIER = 3


def client_rules() -> dict[str, Rule]:
    """Client id -> its rule."""
    return {
        f"soak-{tier}-{i}": parse_rule(rule)
        for tier, rule in TIERS.items()
        for i in range(CLIENTS_PER_TIER)
    }


def write_config(path: Path) -> None:
    """The ``[limits]`` every node starts with."""
    lines = ["[limits]", 'default = "100/minute"', "", "[limits.tiers]"]
    lines += [f'{tier} = "{rule}"' for tier, rule in TIERS.items()]
    lines += ["", "[limits.clients]"]
    for client in client_rules():
        lines.append(f'"{client}" = "{client.split("-")[1]}"')
    path.write_text("\n".join(lines) + "\n")


def all_alive(nodes: list[NodeProcess]) -> bool:
    """Every node answers and sees every node alive."""
    names = {node.name for node in nodes}
    for node in nodes:
        try:
            members = node.members()
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            return False
        if {n for n, state in members.items() if state == "alive"} < names:
            return False
    return True


def rules_everywhere(nodes: list[NodeProcess], rules: dict[str, Rule]) -> bool:
    """Every node reports every client's configured rule."""
    for node in nodes:
        for client, rule in rules.items():
            answer = node.call("GET", f"/v1/rules/{client}")
            if parse_rule(answer["rule"]) != rule:
                return False
    return True


def restart(node: NodeProcess, others: list[NodeProcess], violations: list[str]) -> bool:
    """Start a killed node again, seeded with the others; up to three tries."""
    node.seeds = [other.udp_port for other in others]
    for attempt in range(3):
        try:
            node.start()
            return True
        except RuntimeError as error:
            node.kill()
            print(f"  restart of {node.name} failed (try {attempt + 1}): {error}", flush=True)
    violations.append(f"restart_failed: {node.name} did not come back after three tries")
    return False


def run_faults(
    shared: Shared,
    nodes: list[NodeProcess],
    lives: dict[str, int],
    rng: random.Random,
    deadline: float,
    t0: float,
    violations: list[str],
) -> list[Fault]:
    """Kill and restart nodes until ``deadline`` (monotonic); the faults, in order."""
    faults: list[Fault] = []
    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
    while True:
        now = time.monotonic()
        if now >= deadline:
            return faults
        if now < next_kill or next_kill + QUIET_END_S > deadline:
            time.sleep(min(0.2, max(0.0, deadline - now)))
            continue
        victim = rng.choice(nodes)
        restart_after = rng.uniform(*RESTART_AFTER_S)
        with shared.lock:
            shared.up.pop(victim.name, None)
        fault = Fault(victim.name, time.time())
        faults.append(fault)
        killed_mono = time.monotonic()
        victim.kill()
        print(f"[{time.time() - t0:6.1f} s] killed {victim.name} (SIGKILL)", flush=True)
        time.sleep(restart_after)
        others = [node for node in nodes if node is not victim]
        if restart(victim, others, violations):
            lives[victim.name] += 1
            fault.restarted = time.time()
            with shared.lock:
                shared.up[victim.name] = lives[victim.name]
            print(f"[{fault.restarted - t0:6.1f} s] restarted {victim.name}", flush=True)
            try:
                wait_for(f"{victim.name} to rejoin", lambda: all_alive(nodes), REJOIN_TIMEOUT_S)
                fault.alive = time.time()
                print(f"[{fault.alive - t0:6.1f} s] three alive in every view", flush=True)
            except TimeoutError as error:
                violations.append(f"no_rejoin: {error}")
        next_kill = killed_mono + rng.uniform(*KILL_EVERY_S)
        if fault.alive is None:
            return faults  # the cluster is not whole: no more faults on top of it
