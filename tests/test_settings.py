"""The settings reader (``core/settings.py``): declared fields, refusals, dotted keys, hooks.

Its two users, the daemon's config file and the simulator's scenarios, are tested
in ``test_config_file.py`` and ``test_sim_infra.py``; here a small settings class
exercises each rule of the reader on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from meshlimit.core.settings import (
    Reader,
    Setting,
    SettingsError,
    dotted,
    read_settings,
    toml,
)


def _port(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a port")
    return int(text)


def _read_aliases(
    reader: Reader, key: str, raw: object, earlier: Mapping[str, object]
) -> dict[str, str]:
    """Names of hosts declared in ``hosts``, read after it whatever the declaration order."""
    hosts = earlier["hosts"]
    assert isinstance(hosts, dict)
    aliases = {}
    for alias, host in reader.typed(key, raw, dict).items():
        entry = dotted(key, alias)
        if reader.typed(entry, host, str) not in hosts:
            raise reader.error(entry, f"no host {host!r}")
        aliases[alias] = host
    return aliases


@dataclass(frozen=True, slots=True)
class Inner:
    ratio: float = field(default=0.5, metadata=toml(low=0, high=1))
    ports: tuple[int, ...] = field(
        default=(), metadata=toml(kind=list, items=Setting(kind=str, check=_port))
    )


@dataclass(frozen=True, slots=True)
class Outer:
    name: str = field(metadata=toml())
    size: int = field(metadata=toml(key="size_bytes", low=1))
    aliases: dict[str, str] = field(default_factory=dict, metadata=toml(read=_read_aliases))
    mode: str | None = field(default=None, metadata=toml(choices=("fast", "safe")))
    hosts: dict[str, str] = field(
        default_factory=dict, metadata=toml(kind=dict, values=Setting(kind=str))
    )
    inner: Inner = field(default_factory=Inner, metadata=toml())
    origin: str = "nowhere"  # not in the file


HEAD = 'name = "x"\nsize_bytes = 3\n'


def read(text: str | bytes, **defaults: object) -> Outer:
    return read_settings(Outer, text, source="s.toml", defaults=defaults)


def refusal(text: str | bytes) -> tuple[str, str]:
    with pytest.raises(SettingsError) as info:
        read(text)
    error = info.value
    assert error.source == "s.toml"
    assert str(error) == (f"s.toml: {error.key}: {error.problem}" if error.key else
                          f"s.toml: {error.problem}")  # fmt: skip
    return error.key, error.problem


def test_a_file_is_read_into_the_declared_fields() -> None:
    text = HEAD + 'mode = "safe"\n[hosts]\na = "10.0.0.1"\n[aliases]\nweb = "a"\n'
    text += '[inner]\nratio = 1\nports = ["80", "443"]\n'
    outer = read(text, origin="here")
    inner = Inner(1.0, (80, 443))
    assert outer == Outer("x", 3, {"web": "a"}, "safe", {"a": "10.0.0.1"}, inner, "here")
    assert type(outer.inner.ratio) is float  # 1 read as 1.0
    assert read(HEAD) == Outer("x", 3)
    assert read("size_bytes = 3\n", name="default").name == "default"  # a default for "name"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (HEAD + "colour = 1", "colour", "unknown key; the keys known in the top level are name, "
                                        "size_bytes, aliases, mode, hosts, inner"),
        (HEAD + "[inner]\nx = 1", "inner.x", "unknown key; the keys known in [inner] are ratio"),
        ('name = "x"', "size_bytes", "missing; this key is required"),
        ('name = "x"\nsize_bytes = true', "size_bytes", "expected an integer, got a boolean"),
        ('name = "x"\nsize_bytes = 0', "size_bytes", "must be 1 or more, got 0"),
        ("name = 5\nsize_bytes = 1", "name", "expected a string, got an integer (5)"),
        (HEAD + 'mode = "slow"', "mode", "'slow' is not one of fast, safe"),
        (HEAD + "inner = 1", "inner", "expected a table, got an integer"),
        (HEAD + "[inner]\nratio = 2", "inner.ratio", "must be from 0 to 1, got 2.0"),
        (HEAD + "[inner]\nratio = nan", "inner.ratio", "expected a finite number, got nan"),
        (HEAD + "[inner]\nratio = 1" + "0" * 400, "inner.ratio", "expected a finite number"),
        (HEAD + '[inner]\nports = ["1", "x"]', "inner.ports[1]", "'x' is not a port"),
        (HEAD + "[inner]\nports = [1]", "inner.ports[0]", "expected a string, got an integer"),
        (HEAD + '[hosts]\n"a b" = 1', 'hosts."a b"', "expected a string, got an integer"),
        (HEAD + '[aliases]\nweb = "b"', "aliases.web", "no host 'b'"),
        (HEAD + "name = [", "", "not valid TOML: "),
        (b"name = '\xff'", "", "not UTF-8 text (byte 8)"),
    ],
)  # fmt: skip
def test_every_refusal_names_the_key_and_the_problem(text: str, key: str, problem: str) -> None:
    found_key, found_problem = refusal(text)
    assert found_key == key
    assert found_problem.startswith(problem), found_problem


def test_hooks_see_the_fields_read_before_them_and_the_defaults() -> None:
    # aliases is declared before hosts but read after it; hosts left out is its default.
    assert refusal(HEAD + '[aliases]\nweb = "a"') == ("aliases.web", "no host 'a'")


def test_errors_can_be_the_callers_own_subclass() -> None:
    class ToolError(SettingsError):
        pass

    with pytest.raises(ToolError, match=r"^t\.toml: size_bytes: missing"):
        read_settings(Outer, 'name = "x"', source="t.toml", error=ToolError)


def test_a_setting_whose_toml_type_cannot_be_told_must_declare_it() -> None:
    @dataclass(frozen=True)
    class Vague:
        pair: tuple[int, int] = field(default=(0, 0), metadata=toml())

    with pytest.raises(AssertionError, match="declare the TOML type"):
        read_settings(Vague, "", source="v.toml")


def test_dotted_quotes_keys_that_are_not_bare() -> None:
    assert dotted("", "gold") == "gold"
    assert dotted("limits.tiers", "a-b_9") == "limits.tiers.a-b_9"
    assert dotted("limits.clients", "tenant/42") == 'limits.clients."tenant/42"'
    assert dotted("limits.clients", "") == 'limits.clients.""'
