"""End-state verdicts: what the running nodes must hold when a run ends, by when.

The world hands the checkers the running nodes at the end (``Checkers.on_final_state``);
these functions read them, never change them, and judge each property only when the run
gave it the time the design needs since the last disturbance (a fault starting or ending,
a node starting or stopping: ``History.last_disturbance``) over links that stayed clean:

- ``rules_diverged``: every running node holds the same registry (equal digests) and, for
  every entry written, at least the newest write by HLC stamp (not the last to arrive)
  that surely survived -- its writer ran to the end, or sent it over a clean link to a
  live peer that did -- within :data:`RULE_ROUNDS` anti-entropy intervals of the last
  write or disturbance; and in a run where no clock was touched, the newest by stamp is the
  latest in time (a write in a later millisecond gets a newer stamp, restarts included);
- ``membership_diverged``: every running node holds every other one alive, within a
  push-pull interval plus the detection bound of the last disturbance;
- ``replica_behind``: a replica (strict: the owner's ring successors; local: every peer the
  owner holds live) holds the owner's slot of every window still counted, as it was one
  gossip interval plus a delay before the end, when both ran and the link was clean since
  the window's first admission; so do the owner and its replicas of a node's degraded
  admissions (re-sent to them until they have them), if that node's ring held still;
- ``holder_behind`` (:mod:`~meshlimit.sim.promoted`): a crashed owner's slot at every
  holder of the ring that replaced it; ``report_behind`` (:mod:`~meshlimit.sim.reports`): a
  degraded slot at the replicas while its owner stays unreachable;
- ``clock_offset_wrong``: a node's estimate of a peer's clock offset is within
  ``(7/8)^m (spread + d/2) + d/2`` of the truth, ``m`` the probe rounds since the pair's
  last skew or step over a clean link, for pairs that never drifted or paused (see
  ``_offsets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshlimit.core.registry import RESET_PREFIX

from .bounds import TICK_SLACK_NS, UNBOUNDED, detection_bound_ns
from .events import NS_PER_S, SIM_EPOCH_NS
from .promoted import held_in_window, promoted_behind
from .reports import reports_behind
from .reset_state import stale_after_reset
from .resync_wait import skipped_resyncs
from .rules_in_force import unordered_stamps
from .verdicts import Violation

if TYPE_CHECKING:  # pragma: no cover
    from meshlimit.cluster.node import Node

    from .checkers import Checkers
    from .history import History, Life

#: Anti-entropy intervals after which every node holds every rule: a stale node is
#: repaired each interval it picks, or is picked by, an up-to-date one.
RULE_ROUNDS = 10
#: Membership news of a merge after a partition waits for the next push-pull at worst.
MEMBERSHIP_EXTRA_ROUNDS = 2
#: What an estimate keeps of its past on each probe sample (``probes.py``: alpha = 1/8).
_EWMA_KEEP = 7 / 8


def judge(
    checkers: Checkers,
    final: dict[str, tuple[Node, int]],
    end: int,
    writes: dict[str, list[RuleWrite]],
) -> list[Violation]:
    """Every end-state verdict (see the module docstring)."""
    out: list[Violation] = []
    history = checkers.history
    final = {  # a paused node is not judged: its peers rightly took it for dead
        name: entry
        for name, entry in final.items()
        if (life := history.life(name)) is not None and not life.paused_during(end, end)
    }
    nodes = {name: node for name, (node, _) in final.items()}
    config = checkers.config
    clean_since = history.last_disturbance
    clean = _clean(history, list(nodes), clean_since, end)
    rules_due = max(clean_since, checkers.last_rule_at) + RULE_ROUNDS * (
        config.anti_entropy_interval_ns
    )
    membership = config.membership
    members_due = clean_since + MEMBERSHIP_EXTRA_ROUNDS * membership.push_pull_interval_ns
    members_due += detection_bound_ns(membership, len(history.members))
    apart = _membership(nodes)  # sides that reaped each other meet at a push-pull
    if clean and end >= rules_due and (not apart or end >= members_due):
        out += [Violation("rules_diverged", d) for d in _rules(checkers, nodes, writes, end)]
    if clean and end >= members_due:
        out += [Violation("membership_diverged", d) for d in apart]
    out += [Violation("replica_behind", d) for d in _replicas(checkers, nodes, end)]
    out += [Violation("holder_behind", d) for d in promoted_behind(checkers, nodes, end)]
    out += [Violation("report_behind", d) for d in reports_behind(checkers, nodes, end)]
    out += [Violation("clock_offset_wrong", d) for d in _offsets(checkers, final, end)]
    out += [Violation("resync_stalled", d) for d in _resyncs(checkers, nodes)]
    out += [Violation("reset_not_kept", d) for d in stale_after_reset(checkers, nodes, end)]
    out += [Violation("resync_skipped", d) for d in skipped_resyncs(checkers, nodes)]
    lives = {n: (life.key, node) for n, node in nodes.items() if (life := history.life(n))}
    out += [Violation("stale_rule", d) for d in checkers.rules_used.judge(lives)]
    out += [Violation("stamps_not_increasing", d) for d in unordered_stamps(writes)]
    return out


def _resyncs(checkers: Checkers, nodes: dict[str, Node]) -> list[str]:
    """A restarted node that gave up waiting for its counts (``resync_timeouts``, after
    ``resync_wait_ns``) though every other node ran and every link was clean, with no other
    disturbance, from its start until the wait ran out: a peer never said it had handed
    its counters back, or said it sent more than arrived (``cluster/node/resync.py``)."""
    history = checkers.history
    wait = getattr(checkers.config, "resync_wait_ns", 0)
    out = []
    for name, node in nodes.items():
        life = history.life(name)
        stats = getattr(node, "stats", None)  # the checkers' tests pass stand-ins
        if life is None or stats is None or not stats.get("resync_timeouts"):
            continue
        start, stop = life.started_at, life.started_at + wait
        others = [n for n in history.lives if n != name]
        running = all(any(x.running_through(start, stop) for x in history.lives[n]) for n in others)
        quiet = not any(start < t <= stop for t in history.disturbances)
        if running and quiet and _clean(history, [name, *others], start, stop):
            out.append(f"{name} (life {life.number}) waited {wait / 1e9:g} s for its counts")
    return out


def _clean(history: History, names: list[str], start: int, end: int) -> bool:
    return history.delay_bound(start, end) < UNBOUNDED and all(
        history.link_clean(a, b, start, end) for a in names for b in names if a != b
    )


@dataclass(frozen=True, slots=True)
class RuleWrite:
    """A registry entry written at a node: its HLC stamp, value, instant and writer's life."""

    stamp: tuple[Any, ...]
    value: Any
    at: int
    writer: tuple[str, int] | None


def _rules(
    checkers: Checkers, nodes: dict[str, Node], writes: dict[str, list[RuleWrite]], end: int
) -> list[str]:
    """Equal registries, each entry at least the newest write that surely survived (its
    writer ran to the end, or sent it over a clean link to a live peer that did)."""
    out = []
    true_clocks = not any(checkers.history.clock_changes.values())
    digests = {name: node.registry.digest for name, node in nodes.items()}
    if len(set(digests.values())) > 1:
        out.append(f"registries differ: digests {digests}")
    for key, written in sorted(writes.items()):
        if key.startswith(RESET_PREFIX):
            continue
        kept = [w for w in written if _survived(checkers, w, end)]
        if not kept:
            continue
        newest = max(kept, key=lambda w: w.stamp)
        if true_clocks:
            out += _in_time_order(key, written, max(kept, key=lambda w: w.at), nodes)
        for name, node in sorted(nodes.items()):
            entry = node.registry.entry(key)
            if entry is None and newest.value is None:
                continue  # a removal whose tombstone was purged once every node had it
            if entry is None or tuple(entry.stamp) < newest.stamp:
                held = None if entry is None else tuple(entry.stamp)
                out.append(
                    f"{name} holds {key} at stamp {held}, older than the newest write"
                    f" {newest.stamp} (at {newest.at / NS_PER_S:.3f} s)"
                )
    return out


def _in_time_order(
    key: str, written: list[RuleWrite], latest: RuleWrite, nodes: dict[str, Node]
) -> list[str]:
    """With every clock true, a write in a later millisecond gets a newer HLC stamp than
    any before it, restarts included: no node may hold a write older in time than the
    latest one that surely survived (``latest``)."""
    by_stamp = {w.stamp: w for w in written}
    out = []
    for name, node in sorted(nodes.items()):
        entry = node.registry.entry(key)
        held = None if entry is None else by_stamp.get(tuple(entry.stamp))
        if held is not None and held.at // 1_000_000 < latest.at // 1_000_000:
            out.append(
                f"{name} holds {key} as written at {held.at / NS_PER_S:.3f} s (stamp"
                f" {held.stamp}) over the later write at {latest.at / NS_PER_S:.3f} s (stamp"
                f" {latest.stamp}): with every clock true, a later write gets a newer stamp"
            )
    return out


def _survived(checkers: Checkers, write: RuleWrite, end: int) -> bool:
    history = checkers.history
    if write.writer is None:
        return False
    writer = _life(history, *write.writer)
    if writer is None:
        return False
    if writer.stopped_at >= end:
        return True
    view = checkers.views.get(writer.key)
    arrived = write.at + history.delay_bound(write.at, end) + TICK_SLACK_NS
    for name, lives in history.lives.items():
        peer = lives[-1] if lives else None
        if (
            peer is not None
            and name != writer.node
            and peer.started_at <= write.at
            and peer.stopped_at >= end
            and view is not None
            and view.live_throughout(name, write.at, write.at)
            and peer.running_through(write.at, arrived)
            and history.link_clean(writer.node, name, write.at, arrived)
        ):
            return True
    return False


def _membership(nodes: dict[str, Node]) -> list[str]:
    out = []
    for name, node in sorted(nodes.items()):
        states = {member: state for member, _, state, _ in node.members()}
        for other in sorted(nodes):
            if other != name and states.get(other) != "alive":
                out.append(f"{name} holds {other} {states.get(other, 'unknown')}, not alive")
    return out


def _replicas(checkers: Checkers, nodes: dict[str, Node], end: int) -> list[str]:
    history = checkers.history
    lag = checkers.config.gossip_interval_ns + TICK_SLACK_NS
    replicas = checkers.config.replicas
    out = []
    for (client, series, index), window in checkers.windows.items():
        window_ns = checkers.window_ns(series)
        if client in checkers.reset_clients or series.startswith("token_bucket"):
            continue  # a token bucket's state is an arrival time, not a count per window
        if index < (SIM_EPOCH_NS + end) // window_ns - 1:
            continue  # its holders may have swept it: only the current and last count
        for (name, number), tally in window.lives.items():
            owner = nodes.get(name)
            life = _life(history, name, number)
            if owner is None or life is None or life.stopped_at < end:
                continue
            first = tally.times[0]
            delay = history.delay_bound(first, end)
            cutoff = end - lag - delay
            expected = tally.total - tally.since(cutoff + 1)
            if delay >= UNBOUNDED or not expected or history.clock_touched(name, end):
                continue
            view = checkers.views.get(life.key)
            prefs = owner.ring.preference_list(client, 1 + replicas)
            if view is None:
                continue
            if not tally.full:
                # Degraded admissions are re-sent to the owner and its replicas (in this
                # node's ring, unchanged since) until they have them.
                if any(at >= first for at, _ in view.ring_history):
                    continue
                kind, targets = "degraded report", [n for n in prefs if n != name]
            elif checkers.local:
                kind, targets = "gossip", [n for n in nodes if n != name and view.live(n)]
            elif prefs[0] == name:
                kind, targets = "replica", list(prefs[1:])
            else:
                continue
            for target in (t for t in targets if t in nodes):
                want = expected
                if kind == "gossip" and tally.degraded and target not in prefs:
                    # Degraded admissions are reported to the owner and replicas only; the
                    # others have the slot as of the last full admission gossiped.
                    last = max((t for t in tally.full_at if t <= cutoff), default=None)
                    want = 0 if last is None else tally.total - tally.since(last + 1)
                held = held_in_window(nodes[target], series, client, name, index)
                peer = history.lives[target][-1]
                if (
                    held is None
                    or held >= want
                    or peer.started_at > first
                    or history.clock_touched(target, end)
                    or not life.running_through(first, end)
                    or not peer.running_through(first, end)
                    or not history.link_clean(name, target, first, end)
                ):
                    continue
                out.append(
                    f"{target} holds {held} of {name}'s {want} admissions of {client}"
                    f" ({series}, window {index}) made before {cutoff / NS_PER_S:.3f} s"
                    f" ({kind})"
                )
    return out


def _offsets(checkers: Checkers, final: dict[str, tuple[Node, int]], end: int) -> list[str]:
    """Each sample errs by half the difference of its two one-way delays, and moves the
    estimate 1/8 of the way (``probes.py``); a probe round of at most ``2 (n - 1)``
    intervals brings one sample of every live member. So ``m`` rounds after the pair's
    last step, the estimate is within ``(7/8)^m (spread + d/2) + d/2`` of the truth,
    ``spread`` the farthest the pair's offset ever stood from its last value."""
    history = checkers.history
    out: list[str] = []
    half_delay = history.delay_bound(0, end) // 2
    if half_delay >= UNBOUNDED // 2:
        return out
    membership = checkers.config.membership
    round_ns = 2 * max(1, len(history.members) - 1) * membership.probe_interval_ns
    for name, (node, offset) in sorted(final.items()):
        life = history.life(name)
        view = checkers.views.get(life.key) if life is not None else None
        if life is None or view is None or life.pauses or name in history.drifted:
            continue
        for peer, estimate in sorted(node.membership.clock_offsets().items()):
            peer_life = history.life(peer)
            if peer not in final or peer_life is None:
                continue
            if any(p < end and q > life.started_at for p, q in _pauses(history, peer)):
                continue  # a pause of any life of the peer's spoils the samples around it
            if peer in history.drifted:
                continue
            relative = _relative(history, name, peer, life.started_at)
            since = max(relative[-1][0], life.started_at, peer_life.started_at)
            if not (
                peer_life.running_through(since, end)
                and view.live_throughout(peer, since, end)
                and history.link_clean(name, peer, since, end)
                and history.link_clean(peer, name, since, end)
            ):
                continue
            truth = final[peer][1] - offset
            spread = max(abs(value - truth) for _, value in relative)
            rounds = (end - since) // round_ns
            bound = int(_EWMA_KEEP**rounds * (spread + half_delay)) + half_delay + TICK_SLACK_NS
            if abs(estimate - truth) > bound:
                out.append(
                    f"{name} estimates {peer}'s clock {estimate / 1e6:+.3f} ms off, truly"
                    f" {truth / 1e6:+.3f} ms (bound {bound / 1e6:.3f} ms, {rounds} probe rounds"
                    f" after the last step)"
                )
    return out


def _pauses(history: History, name: str) -> list[tuple[int, int]]:
    return [pause for life in history.lives.get(name, ()) for pause in life.pauses]


def _relative(history: History, name: str, peer: str, start: int) -> list[tuple[int, int]]:
    """``peer``'s wall clock minus ``name``'s, from each instant on since ``start``."""
    times = sorted({t for t, _ in history.offsets[name]} | {t for t, _ in history.offsets[peer]})
    out = [(t, _at(history.offsets[peer], t) - _at(history.offsets[name], t)) for t in times]
    kept = [(t, v) for t, v in out if t >= start]
    before = [(t, v) for t, v in out if t < start]
    return before[-1:] + kept


def _at(steps: list[tuple[int, int]], instant: int) -> int:
    value = 0
    for t, v in steps:
        if t > instant:
            break
        value = v
    return value


def _life(history: History, name: str, number: int) -> Life | None:
    lives = history.lives.get(name, [])
    return lives[number - 1] if 0 < number <= len(lives) else None
