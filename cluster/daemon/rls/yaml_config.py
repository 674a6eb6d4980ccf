"""envoy ratelimit's YAML config files, read and validated into one tree per domain.

Theory of operation. A file is envoyproxy/ratelimit's format, unchanged::

    domain: messaging
    descriptors:
      - key: message_type
        value: marketing
        descriptors:
          - key: to_number
            rate_limit: {unit: day, requests_per_unit: 5, name: marketing}
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 100}
        shadow_mode: true

:func:`load_config` reads every file into :class:`DescriptorNode` trees keyed as
envoy ratelimit keys them (``src/config/config_impl.go``): a child is stored
under ``key`` or ``key_value``, so lookups are the same string operations; a
child whose key ends in ``*`` is also listed as a wildcard of its parent, in
file order. The checks and their wording are envoy ratelimit's: an empty
``domain``, a descriptor without ``key``, a duplicate composite key, a unit
that is not one of ``second minute hour day week month year`` (any case), a
unit given with ``unlimited``, an empty or self-naming ``replaces`` entry,
``share_threshold`` without a wildcard, a key unknown to the format; a second
file of the same domain unless merging is asked for (``MERGE_DOMAIN_CONFIG``).

Scalars are read from the YAML node graph, as Go's yaml.v2 decodes them into
envoy ratelimit's structs: a string field takes the scalar's text as written
(``value: 010`` is ``"010"``, not 8), ``requests_per_unit`` an unsigned 32-bit
integer, flags YAML booleans, a null the zero value. A known key in a place
where envoy ratelimit ignores it (``shadow_mode`` inside ``rate_limit``, a
common slip) is ignored too, and reported in :attr:`RateLimitConfig.warnings`.

Every refusal is one :class:`RlsConfigError` naming the file, the line, the
path of the offending key (``descriptors[0].rate_limit.unit``) and the problem.
Bounds: a file is at most :data:`MAX_FILE_BYTES`; a file's node graph (aliases
followed) at most :data:`MAX_NODES` nodes and :data:`MAX_DEPTH` levels deep.

Pure: it takes the files' text; ``loader.py`` reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: Envoy's ``RateLimitResponse.RateLimit.Unit`` names and envoy ratelimit's window for
#: each (``utils.UnitToDivider``): a month is 30 days, a year 365.
UNIT_SECONDS: dict[str, int] = {
    "SECOND": 1,
    "MINUTE": 60,
    "HOUR": 3600,
    "DAY": 86_400,
    "WEEK": 7 * 86_400,
    "MONTH": 30 * 86_400,
    "YEAR": 365 * 86_400,
}
#: The keys envoy ratelimit accepts anywhere in a file (``validKeys``).
VALID_KEYS = frozenset(
    {
        "domain",
        "key",
        "value",
        "descriptors",
        "rate_limit",
        "unit",
        "requests_per_unit",
        "unlimited",
        "shadow_mode",
        "name",
        "replaces",
        "detailed_metric",
        "value_to_metric",
        "share_threshold",
    }
)
_ROOT_KEYS = frozenset({"domain", "descriptors"})
_DESCRIPTOR_KEYS = frozenset(
    {
        "key",
        "value",
        "rate_limit",
        "descriptors",
        "shadow_mode",
        "detailed_metric",
        "value_to_metric",
        "share_threshold",
    }
)
_RATE_LIMIT_KEYS = frozenset({"requests_per_unit", "unit", "unlimited", "name", "replaces"})
#: Why 1 MiB: thousands of descriptors; a config larger than that belongs in fewer rules.
MAX_FILE_BYTES = 1 << 20
#: Most YAML nodes one file may expand to (aliases followed): bounds the work a small
#: file of nested aliases could ask for.
MAX_NODES = 200_000
#: Deepest nesting of YAML nodes. Why 64: 30 levels of descriptors; Envoy sends a handful.
MAX_DEPTH = 64
_MAX_U32 = 2**32 - 1
_TAG = "tag:yaml.org,2002:"


class RlsConfigError(ValueError):
    """A config file that cannot be used: ``file:line: path: problem``."""

    def __init__(self, source: str, line: int | None, path: str, problem: str) -> None:
        self.source, self.line, self.path, self.problem = source, line, path, problem
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class ConfiguredLimit:
    """A ``rate_limit`` block, as envoy ratelimit's ``config.RateLimit``."""

    requests_per_unit: int
    unit: str
    """A :data:`UNIT_SECONDS` name; ``""`` for an unlimited limit given no valid unit."""
    full_key: str
    """The statistics key, ``domain.key_value.key`` (envoy ratelimit's ``FullKey``)."""
    unlimited: bool = False
    shadow_mode: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()
    detailed_metric: bool = False


@dataclass(slots=True)
class DescriptorNode:
    """One level of a domain's tree (envoy ratelimit's ``rateLimitDescriptor``)."""

    children: dict[str, DescriptorNode] = field(default_factory=dict)
    """By ``key`` or ``key_value``."""
    limit: ConfiguredLimit | None = None
    wildcard_keys: list[str] = field(default_factory=list)
    """The children's keys that end in ``*``, in file order (first match wins)."""
    value_to_metric: bool = False
    share_threshold: bool = False
    wildcard_pattern: str = ""
    """This node's own key when ``share_threshold`` is set (it ends in ``*``)."""


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Every domain of the loaded files."""

    domains: Mapping[str, DescriptorNode] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    """Known keys in places envoy ratelimit ignores them: ignored here too."""

    def describe(self) -> list[str]:
        """One line per configured limit, ``full_key: N/UNIT [flags]`` (for logs and tests)."""
        lines: list[str] = []
        for node in self.domains.values():
            _describe(node, lines)
        return sorted(lines)


def _describe(node: DescriptorNode, lines: list[str]) -> None:
    for child in node.children.values():
        limit = child.limit
        if limit is not None:
            text = "unlimited" if limit.unlimited else f"{limit.requests_per_unit}/{limit.unit}"
            flags = [f for f in ("shadow_mode", "detailed_metric") if getattr(limit, f)]
            lines.append(f"{limit.full_key}: {text}{''.join(' ' + f for f in flags)}")
        _describe(child, lines)


def load_config(
    files: Iterable[tuple[str, str]], *, merge_domains: bool = False
) -> RateLimitConfig:
    """The config of ``files`` (``(source, text)`` pairs), in order; :class:`RlsConfigError`
    names the first problem. ``merge_domains``: a domain's files are merged (envoy
    ratelimit's ``MERGE_DOMAIN_CONFIG``), else a second file of a domain is refused."""
    domains: dict[str, DescriptorNode] = {}
    sources: list[str] = []
    warnings: list[str] = []
    for source, text in files:
        reader = _FileReader(source, warnings)
        domain, descriptors, line = reader.root(text)
        if domain in domains and not merge_domains:
            raise RlsConfigError(
                source, line, "domain", f"duplicate domain '{domain}' in config file"
            )
        tree = domains.setdefault(domain, DescriptorNode())
        reader.descriptors(tree, domain + ".", descriptors, "descriptors")
        sources.append(source)
    return RateLimitConfig(domains, tuple(sources), tuple(warnings))


class _FileReader:
    """Reads one file's node graph, counting nodes, naming every problem's place."""

    def __init__(self, source: str, warnings: list[str]) -> None:
        self.source = source
        self.warnings = warnings
        self.nodes = 0
        self._scalars = yaml.SafeLoader("")

    def root(self, text: str) -> tuple[str, SequenceNode | None, int | None]:
        """``(domain, descriptors node, line of domain)`` of the file's text."""
        if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            raise RlsConfigError(self.source, None, "", f"larger than {MAX_FILE_BYTES} bytes")
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = None if mark is None else mark.line + 1
            raise RlsConfigError(
                self.source, line, "", f"error loading config file: {error}"
            ) from None
        if node is None:  # an empty file: envoy ratelimit reads an empty domain
            raise RlsConfigError(self.source, None, "", "config file cannot have empty domain")
        self._validate(node, "", 0)
        fields_ = self._mapping(node, "", _ROOT_KEYS)
        domain = self._string(fields_.get("domain"), "domain")
        if domain == "":
            raise RlsConfigError(
                self.source, _line(node), "domain", "config file cannot have empty domain"
            )
        descriptors = self._sequence(fields_.get("descriptors"), "descriptors")
        return domain, descriptors, _line(fields_.get("domain", node))

    def descriptors(
        self, parent: DescriptorNode, parent_key: str, node: SequenceNode | None, path: str
    ) -> None:
        """Load a ``descriptors`` list into ``parent`` (``loadDescriptors``)."""
        for index, item in enumerate(node.value if node is not None else ()):
            here = f"{path}[{index}]"
            fields_ = self._mapping(item, here, _DESCRIPTOR_KEYS)
            key = self._string(fields_.get("key"), f"{here}.key")
            if key == "":
                raise RlsConfigError(self.source, _line(item), here, "descriptor has empty key")
            value = self._string(fields_.get("value"), f"{here}.value")
            final_key = f"{key}_{value}" if value else key
            composite = parent_key + final_key
            if final_key in parent.children:
                raise RlsConfigError(
                    self.source,
                    _line(item),
                    here,
                    f"duplicate descriptor composite key '{composite}'",
                )
            flags = {
                name: self._bool(fields_.get(name), f"{here}.{name}")
                for name in ("shadow_mode", "detailed_metric", "value_to_metric", "share_threshold")
            }
            limit = self._limit(fields_.get("rate_limit"), f"{here}.rate_limit", composite, flags)
            if flags["share_threshold"] and not final_key.endswith("*"):
                raise RlsConfigError(
                    self.source,
                    _line(item),
                    f"{here}.share_threshold",
                    "share_threshold can only be used with wildcard values (ending with "
                    f"'*'), but found key '{final_key}'",
                )
            child = DescriptorNode(
                limit=limit,
                value_to_metric=flags["value_to_metric"],
                share_threshold=flags["share_threshold"],
                wildcard_pattern=final_key if flags["share_threshold"] else "",
            )
            if final_key.endswith("*"):
                parent.wildcard_keys.append(final_key)
            nested = self._sequence(fields_.get("descriptors"), f"{here}.descriptors")
            self.descriptors(child, composite + ".", nested, f"{here}.descriptors")
            parent.children[final_key] = child

    def _limit(
        self, node: Node | None, path: str, full_key: str, flags: dict[str, bool]
    ) -> ConfiguredLimit | None:
        """A ``rate_limit`` block (None when absent or null, as Go's nil pointer)."""
        if node is None or _is_null(node):
            return None
        fields_ = self._mapping(node, path, _RATE_LIMIT_KEYS)
        unlimited = self._bool(fields_.get("unlimited"), f"{path}.unlimited")
        unit_text = self._string(fields_.get("unit"), f"{path}.unit")
        unit = unit_text.upper()
        valid_unit = unit in UNIT_SECONDS
        if unlimited and valid_unit:
            raise RlsConfigError(
                self.source,
                _line(fields_["unit"]),
                f"{path}.unit",
                "should not specify rate limit unit when unlimited",
            )
        if not unlimited and not valid_unit:
            raise RlsConfigError(
                self.source,
                _line(fields_.get("unit", node)),
                f"{path}.unit",
                f"invalid rate limit unit '{unit_text}'",
            )
        name = self._string(fields_.get("name"), f"{path}.name")
        replaces = self._replaces(fields_.get("replaces"), f"{path}.replaces", name)
        return ConfiguredLimit(
            requests_per_unit=self._u32(
                fields_.get("requests_per_unit"), f"{path}.requests_per_unit"
            ),
            unit=unit if valid_unit else "",
            full_key=full_key,
            unlimited=unlimited,
            shadow_mode=flags["shadow_mode"],
            name=name,
            replaces=replaces,
            detailed_metric=flags["detailed_metric"],
        )

    def _replaces(self, node: Node | None, path: str, own_name: str) -> tuple[str, ...]:
        names: list[str] = []
        sequence = self._sequence(node, path)
        for index, item in enumerate(sequence.value if sequence is not None else ()):
            here = f"{path}[{index}]"
            name = self._string(self._mapping(item, here, frozenset({"name"})).get("name"), here)
            if name == "":
                raise RlsConfigError(
                    self.source, _line(item), here, "should not have an empty replaces entry"
                )
            if name == own_name:
                raise RlsConfigError(
                    self.source,
                    _line(item),
                    here,
                    "replaces should not contain name of same descriptor",
                )
            names.append(name)
        return tuple(names)

    # --- the node graph ---------------------------------------------------------------

    def _validate(self, node: Node, path: str, depth: int) -> None:
        """envoy ratelimit's ``validateYamlKeys``, bounded: keys are strings it knows,
        lists hold mappings, leaves are scalars."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise RlsConfigError(self.source, _line(node), path, f"more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise RlsConfigError(self.source, _line(node), path, f"nested deeper than {MAX_DEPTH}")
        if isinstance(node, MappingNode):
            for key_node, value in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag != _TAG + "str":
                    raise RlsConfigError(
                        self.source,
                        _line(key_node),
                        path,
                        f"config error, key is not of type string: {_text(key_node)}",
                    )
                key = key_node.value
                here = f"{path}.{key}" if path else key
                if key not in VALID_KEYS:
                    raise RlsConfigError(
                        self.source, _line(key_node), here, f"config error, unknown key '{key}'"
                    )
                self._validate(value, here, depth + 1)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                here = f"{path}[{index}]"
                if not isinstance(item, MappingNode):
                    raise RlsConfigError(
                        self.source,
                        _line(item),
                        here,
                        "config error, yaml file contains list of type other than map: "
                        + _text(item),
                    )
                self._validate(item, here, depth + 1)

    def _mapping(self, node: Node, path: str, known: frozenset[str]) -> dict[str, Node]:
        """A mapping's entries by key; keys envoy ratelimit ignores here are warned of."""
        if not isinstance(node, MappingNode):
            raise RlsConfigError(
                self.source, _line(node), path, f"expected a mapping, got {_text(node)}"
            )
        entries: dict[str, Node] = {}
        for key_node, value in node.value:
            key = key_node.value
            here = f"{path}.{key}" if path else key
            if key not in known:
                self.warnings.append(
                    f"{self.source}:{_line(key_node)}: {here}: key '{key}' has no meaning "
                    "here; ignored (as envoy ratelimit ignores it)"
                )
                continue
            entries[key] = value  # a repeated key: the last wins, as in yaml.v2
        return entries

    def _sequence(self, node: Node | None, path: str) -> SequenceNode | None:
        if node is None or _is_null(node):
            return None
        if not isinstance(node, SequenceNode):
            raise RlsConfigError(
                self.source, _line(node), path, f"expected a list, got {_text(node)}"
            )
        return node

    def _string(self, node: Node | None, path: str) -> str:
        """A string field: the scalar as written; null or absent is ``""``."""
        if node is None or _is_null(node):
            return ""
        if not isinstance(node, ScalarNode):
            raise RlsConfigError(
                self.source, _line(node), path, f"expected a string, got {_text(node)}"
            )
        return str(node.value)

    def _u32(self, node: Node | None, path: str) -> int:
        if node is None or _is_null(node):
            return 0
        value = self._scalar(node, path)
        if type(value) is not int or not 0 <= value <= _MAX_U32:
            raise RlsConfigError(
                self.source,
                _line(node),
                path,
                f"expected an integer from 0 to {_MAX_U32}, got {_text(node)}",
            )
        return value

    def _bool(self, node: Node | None, path: str) -> bool:
        if node is None or _is_null(node):
            return False
        value = self._scalar(node, path)
        if type(value) is not bool:
            raise RlsConfigError(
                self.source, _line(node), path, f"expected true or false, got {_text(node)}"
            )
        return value

    def _scalar(self, node: Node, path: str) -> object:
        if not isinstance(node, ScalarNode):
            raise RlsConfigError(
                self.source, _line(node), path, f"expected a value, got {_text(node)}"
            )
        try:
            return self._scalars.construct_object(node)
        except yaml.YAMLError as error:
            raise RlsConfigError(self.source, _line(node), path, str(error)) from None


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


def _line(node: Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def _text(node: Node) -> str:
    """A node as an error shows it."""
    if isinstance(node, ScalarNode):
        return repr(node.value)
    return "a mapping" if isinstance(node, MappingNode) else "a list"
