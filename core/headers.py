"""The IETF RateLimit headers for a decision: shared by the HTTP API and the web integrations.

A pure function of :class:`~meshlimit.core.decision.Decision`\\ s and the rules
they were decided under, so every front door sends the same headers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .decision import Decision
from .rules import NS_PER_MS, Rule

POLICY = "default"

#: One policy of a response: its name, the decision under it, and its rule (None: unknown,
#: so ``w`` and the burst are left out).
Policy = tuple[str, Decision, Rule | None]


def ratelimit_headers(decision: Decision, rule: Rule | None) -> dict[str, str]:
    """``RateLimit-Policy``, ``RateLimit`` and, when refused, ``Retry-After``.

    Follows draft-ietf-httpapi-ratelimit-headers-11 (May 2026), sections 3 and 4:
    ``RateLimit-Policy: "default";q=LIMIT;w=WINDOW_S`` and
    ``RateLimit: "default";r=REMAINING;t=SECONDS``. Values are Structured-Field
    integers, so ``w`` is left out for a window that is not whole seconds (the draft
    allows no sub-second precision and ``w`` is optional), and the burst, which the
    draft has no parameter for, goes in a vendor-prefixed one (section 3.1).

    ``t`` is the seconds until the window resets. When a request is refused and can
    fit later, ``t`` is the wait instead, equal to ``Retry-After``: until then the
    available quota is 0, and section 6 says Retry-After SHOULD NOT point earlier than
    the end of the effective window (a sliding window frees room before it resets).
    """
    # ``policy_headers`` of the one policy, unrolled (the HTTP API's hot path): the same text.
    policy = f"{_POLICY_LABEL};q={decision.limit}"
    if rule is not None:
        if rule.window_ns % (1000 * NS_PER_MS) == 0:
            policy += f";w={rule.window_ns // (1000 * NS_PER_MS)}"
        if rule.burst:
            policy += f";meshlimit-burst={rule.burst}"
    headers = {"RateLimit-Policy": policy}
    seconds = math.ceil(decision.reset_after)
    if not decision.allowed and not math.isinf(decision.retry_after):
        seconds = math.ceil(decision.retry_after)
        if seconds >= 0:
            headers["Retry-After"] = str(seconds)
    headers["RateLimit"] = f"{_POLICY_LABEL};r={max(0, decision.remaining)};t={seconds}"
    return headers


def policy_headers(policies: Sequence[Policy]) -> dict[str, str]:
    """The headers for a request checked under several policies (one per limit).

    Both fields are Structured-Field lists (draft sections 3 and 4), one item per
    policy, in the order given; names must be distinct (the draft pairs a
    ``RateLimit`` item with its policy by name). ``Retry-After``, when a policy
    refused and can fit later, is the longest such wait. Empty ``policies``: no headers.
    """
    assert len({name for name, _, _ in policies}) == len(policies), "policy names repeat"
    items: list[str] = []
    states: list[str] = []
    retry = -1
    for name, decision, rule in policies:
        label = _sf_string(name)
        policy = f"{label};q={decision.limit}"
        if rule is not None and rule.window_ns % (1000 * NS_PER_MS) == 0:
            policy += f";w={rule.window_ns // (1000 * NS_PER_MS)}"
        if rule is not None and rule.burst:
            policy += f";meshlimit-burst={rule.burst}"
        seconds = math.ceil(decision.reset_after)
        if not decision.allowed and not math.isinf(decision.retry_after):
            seconds = math.ceil(decision.retry_after)
            retry = max(retry, seconds)
        items.append(policy)
        states.append(f"{label};r={max(0, decision.remaining)};t={seconds}")
    if not items:
        return {}
    headers = {"RateLimit-Policy": ", ".join(items)}
    if retry >= 0:
        headers["Retry-After"] = str(retry)
    headers["RateLimit"] = ", ".join(states)
    return headers


def _sf_string(text: str) -> str:
    """``text`` as a Structured-Field string (RFC 9651 3.3.3): quoted, ``\\`` and ``"`` escaped,
    anything outside printable ASCII replaced by ``?``."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


_POLICY_LABEL = _sf_string(POLICY)
