"""The IETF RateLimit headers for a decision: shared by the HTTP API and the ASGI middleware.

A pure function of a :class:`~meshlimit.core.decision.Decision` and the rule
it was decided under, so every front door sends the same headers.
"""

from __future__ import annotations

import math

from .decision import Decision
from .rules import NS_PER_MS, Rule

POLICY = "default"


def ratelimit_headers(decision: Decision, rule: Rule) -> dict[str, str]:
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
    policy = f'"{POLICY}";q={decision.limit}'
    if rule.window_ns % (1000 * NS_PER_MS) == 0:
        policy += f";w={rule.window_ns // (1000 * NS_PER_MS)}"
    if rule.burst:
        policy += f";meshlimit-burst={rule.burst}"
    seconds = math.ceil(decision.reset_after)
    headers = {"RateLimit-Policy": policy}
    if not decision.allowed and not math.isinf(decision.retry_after):
        seconds = math.ceil(decision.retry_after)
        headers["Retry-After"] = str(seconds)
    headers["RateLimit"] = f'"{POLICY}";r={max(0, decision.remaining)};t={seconds}'
    return headers
