"""Per-descriptor statistics like envoy ratelimit's, as Prometheus metrics with bounded labels.

Theory of operation. envoy ratelimit keeps five counters per statistics key
(``ratelimit.service.rate_limit.DOMAIN.KEY_VALUE.STAT``): ``total_hits``,
``over_limit``, ``near_limit``, ``within_limit`` and ``shadow_mode``, plus
``domain_not_found`` per unknown domain. :class:`DescriptorStats` keeps the
same, by ``(domain, key)``, and serves them as
``meshlimit_envoy_rate_limit_STAT_total{domain, key}`` where ``key`` is the
statistics key less its domain (``to_number``, ``message_type_marketing.to_number``).

The bound. A configured rule is one key, but ``detailed_metric``, a request's
``limit`` override and unknown domains put request values into keys. At most
:data:`MAX_KEYS` keys are kept; a new one past that is counted under the key
:data:`OTHER_KEY` of its domain slot ``""`` (one series), and
``meshlimit_envoy_stat_keys_dropped_total`` counts the keys folded so. A label
value longer than :data:`MAX_LABEL_CHARS` is cut and marked with ``...``.

Requests, errors and events of the service are counters of :attr:`DescriptorStats.service`
(``meshlimit_envoy_requests_total{result}``, ``meshlimit_envoy_events_total{event}``).
Nothing is computed per scrape but the families; a request costs a dict lookup
and a few additions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from meshlimit.cluster.daemon.metrics import Family
from meshlimit.cluster.daemon.rls.counting import StatsDelta

STATS = StatsDelta._fields
#: Most statistics keys kept. Why 10,000: a large config's rules with room for detailed
#: metrics; 50,000 series at most, well within what one Prometheus target should export.
MAX_KEYS = 10_000
#: Where keys past the bound are counted.
OTHER_KEY = "_other"
MAX_LABEL_CHARS = 200
#: Results of a ``ShouldRateLimit`` call, as counted in ``service``.
RESULTS = ("ok", "over_limit", "invalid_argument", "unavailable", "internal")


class DescriptorStats:
    """The counters of every statistics key, bounded at ``max_keys`` keys."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        assert max_keys >= 1
        self.max_keys = max_keys
        self._keys: dict[tuple[str, str], list[int]] = {}
        self._not_found: dict[str, int] = {}
        self.dropped_keys = 0
        """Keys folded into :data:`OTHER_KEY` because the table was full."""
        self.service: Counter[str] = Counter()
        """Requests by result (:data:`RESULTS`) and other events (rule writes, reloads...)."""

    def add(self, domain: str, stats_key: str, delta: StatsDelta) -> None:
        """Add one descriptor's statistics under ``stats_key`` (``domain.key...``)."""
        counts = self._keys.get((domain, stats_key))
        if counts is None:
            counts = self._slot((domain, stats_key))
        for index, value in enumerate(delta):
            counts[index] += value

    def domain_not_found(self, domain: str) -> None:
        """A request for a domain no file configures (envoy ratelimit's ``domain_not_found``)."""
        if domain in self._not_found:
            self._not_found[domain] += 1
        elif len(self._not_found) < self.max_keys:
            self._not_found[domain] = 1
        else:
            self.dropped_keys += 1
            self._not_found[OTHER_KEY] = self._not_found.get(OTHER_KEY, 0) + 1

    def counts(self, domain: str, stats_key: str) -> dict[str, int]:
        """A key's counters by name (zeros for a key never seen)."""
        values = self._keys.get((domain, stats_key), [0] * len(STATS))
        return dict(zip(STATS, values, strict=True))

    def __len__(self) -> int:
        return len(self._keys)

    def _slot(self, where: tuple[str, str]) -> list[int]:
        if len(self._keys) < self.max_keys:
            counts = self._keys[where] = [0] * len(STATS)
            return counts
        self.dropped_keys += 1
        other = ("", OTHER_KEY)
        if other not in self._keys:
            self._keys[other] = [0] * len(STATS)
        return self._keys[other]

    def families(self) -> list[Family]:
        """Every family, computed now."""
        families: list[Family] = []
        labelled = [
            ((domain, _key_label(domain, key)), counts)
            for (domain, key), counts in self._keys.items()
        ]
        for index, stat in enumerate(STATS):
            families.append(
                Family(
                    f"meshlimit_envoy_rate_limit_{stat}",
                    "counter",
                    f"envoy ratelimit's {stat} per statistics key (domain, and the key less "
                    f"its domain); past {self.max_keys} keys, counted under key {OTHER_KEY}.",
                    ("domain", "key"),
                    tuple((labels, counts[index]) for labels, counts in labelled),
                )
            )
        families.append(
            Family(
                "meshlimit_envoy_domain_not_found",
                "counter",
                "Descriptors of a domain no --ratelimit-config file configures.",
                ("domain",),
                tuple(((_cut(d),), n) for d, n in sorted(self._not_found.items())),
            )
        )
        families.append(
            Family(
                "meshlimit_envoy_stat_keys_dropped",
                "counter",
                f"Statistics keys folded into {OTHER_KEY} (the table holds {self.max_keys}).",
                (),
                (((), self.dropped_keys),),
            )
        )
        results = tuple(((result,), self.service.get(result, 0)) for result in RESULTS)
        events = tuple(
            ((name,), count) for name, count in sorted(self.service.items()) if name not in RESULTS
        )
        families.append(
            Family(
                "meshlimit_envoy_requests",
                "counter",
                "ShouldRateLimit calls by result (gRPC errors: invalid_argument, "
                "unavailable, internal).",
                ("result",),
                results,
            )
        )
        families.append(
            Family(
                "meshlimit_envoy_events",
                "counter",
                "Other activity of the Envoy front-end (rule writes, renewals, mismatches, "
                "over-limit markings, config loads...).",
                ("event",),
                events,
            )
        )
        return families


def _key_label(domain: str, stats_key: str) -> str:
    """The statistics key less ``domain.``, cut to :data:`MAX_LABEL_CHARS`."""
    key = stats_key[len(domain) + 1 :] if stats_key.startswith(domain + ".") else stats_key
    return _cut(key)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 3] + "..."


class StatsCollector:
    """A ``prometheus_client`` collector of :class:`DescriptorStats`."""

    def __init__(self, stats: DescriptorStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        from meshlimit.cluster.daemon.http_api import prometheus_family

        return map(prometheus_family, self.stats.families())
