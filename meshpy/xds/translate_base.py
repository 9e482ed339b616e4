"""The shared core of the Envoy-to-model translator: the issue collector and readers for small types.

The translator's one rule is that an Envoy field meshpy does not act on is an error naming the field,
never silently dropped: a config that Envoy would run one way must not quietly run another way here.
`Issues.fields` enforces it generically. Each message reader declares the field names it understands;
`ListFields()` yields exactly the fields that are set (proto3 scalars at their default value are not,
which is fine: the default is what meshpy does too), and every other set field becomes an issue.

Readers never stop at the first problem: they record it, return a placeholder and go on, so that one run
reports everything. Any recorded issue means the caller raises `ConfigError` and no model escapes.
Paths use Envoy's YAML names (`static_resources.clusters[0].load_assignment...`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.types import Address
from meshpy.model.unix_address import pipe_problem

UNSUPPORTED = "not supported by meshpy"

# Constructs Python's `re` accepts but RE2 (Envoy's only regex engine) refuses: lookaround and
# backreferences. Envoy would reject such a config, so meshpy must not quietly accept it.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]")


def child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def enum_name(msg: Any, field: str) -> str:
    """The name of an enum field's value, or its number: proto3 enums are open, so a control plane (or
    a fuzzer) may send a number the enum does not define, and that must be an issue, not a KeyError."""
    number = getattr(msg, field)
    value = msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(number)
    return str(value.name) if value is not None else f"value {number}"


class Issues:
    """Every problem found while translating one config or resource."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append(ConfigIssue(path, reason))

    def fields(self, msg: Any, path: str, understood: Collection[str]) -> None:
        """Report every set field of `msg` that is not in `understood`."""
        for descriptor, _value in msg.ListFields():
            if descriptor.name not in understood:
                self.add(child(path, descriptor.name), UNSUPPORTED)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def seconds(duration: Any) -> float:
    """A google.protobuf.Duration as float seconds."""
    return float(duration.seconds) + float(duration.nanos) / 1e9


def timeout(msg: Any, name: str, default: float | None) -> float | None:
    """A Duration field where unset means Envoy's default and 0 means "no timeout" (None)."""
    if not msg.HasField(name):
        return default
    value = seconds(getattr(msg, name))
    return value if value > 0 else None


def positive_duration(issues: Issues, msg: Any, name: str, path: str, default: float) -> float:
    """A Duration field that must be greater than zero when set (Envoy's `gt: {}` rules)."""
    if not msg.HasField(name):
        return default
    value = seconds(getattr(msg, name))
    if value <= 0:
        issues.add(child(path, name), "must be greater than 0")
        return default
    return value


def wrapped(msg: Any, name: str, default: Any) -> Any:
    """The value of a wrapper field (BoolValue, UInt32Value, ...), or `default` when unset."""
    return getattr(msg, name).value if msg.HasField(name) else default


def unpack(issues: Issues, any_msg: Any, path: str, types: Mapping[str, Any]) -> Any | None:
    """The message packed in `any_msg` (at `path`) if its type is one of `types` (full name -> class)."""
    type_name = any_msg.TypeName()
    cls = types.get(type_name)
    if cls is None:
        issues.add(path, f"{type_name or 'an empty typed_config'} is {UNSUPPORTED}")
        return None
    msg = cls()
    if not any_msg.Unpack(msg):
        issues.add(path, f"cannot unpack {type_name}")
        return None
    return msg


def socket_address(issues: Issues, address: Any, path: str, listening: bool = False) -> Address:
    """An envoy.config.core.v3.Address: a TCP socket address, or a Unix socket (`pipe`, whose `mode`
    only a listening socket uses: a connect ignores it, as in Envoy). `listening`: a listener's, where
    ipv4_compat makes an IPv6 socket take IPv4 too."""
    issues.fields(address, path, {"socket_address", "pipe"})
    if address.HasField("pipe"):
        pipe, pipe_path = address.pipe, child(path, "pipe")
        issues.fields(pipe, pipe_path, {"path", "mode"})
        problem = pipe_problem(pipe.path, pipe.mode)
        if problem is not None:
            issues.add(child(pipe_path, problem[0]), problem[1])
        return Address(host="", port=0, path=pipe.path, mode=pipe.mode)
    if not address.HasField("socket_address"):
        if not address.ListFields():
            issues.add(path, "socket_address is required")
        return Address(host="", port=0)
    sock = address.socket_address
    sock_path = child(path, "socket_address")
    # `protocol` is TCP when unset (not listed); UDP is listed and reported as unsupported.
    issues.fields(sock, sock_path, {"address", "port_value", *(("ipv4_compat",) if listening else ())})
    if not sock.address:
        issues.add(child(sock_path, "address"), "must not be empty")
    if sock.port_value > 65535:
        issues.add(child(sock_path, "port_value"), f"must be at most 65535, got {sock.port_value}")
    # (On an IPv4 address ipv4_compat changes nothing, in Envoy as here.)
    return Address(host=sock.address, port=sock.port_value,
                   v4_compat=sock.ipv4_compat and ":" in sock.address)


def regex(issues: Issues, matcher: Any, path: str) -> str:
    """An envoy.type.matcher.v3.RegexMatcher: the pattern, checked to compile in Python's `re`."""
    issues.fields(matcher, path, {"google_re2", "regex"})
    if matcher.HasField("google_re2"):
        # max_program_size is deprecated and only bounds RE2's compiled size: not a behaviour.
        issues.fields(matcher.google_re2, child(path, "google_re2"), {"max_program_size"})
    return checked_pattern(issues, matcher.regex, child(path, "regex"))


def checked_pattern(issues: Issues, pattern: str, path: str) -> str:
    if not pattern:
        issues.add(path, "must not be empty")
        return pattern
    if _NOT_RE2.search(pattern):
        issues.add(path, "lookaround and backreferences are not RE2 syntax")
        return pattern
    try:
        re.compile(pattern)
    except re.error as exc:
        issues.add(path, f"invalid regex: {exc}")
    return pattern
