"""Parsers for the human-sized values in config files: durations, sizes and addresses.

Public because every place that reads a value from a person (the meshpy YAML, CLI flags, the control
plane's declarative sources) should accept the same spellings. Each parser raises `ValueError` whose
message is a reason that reads well after a path (`clusters[0].endpoints[1]: port 70000 is out of
range`), so callers can turn it into a `ConfigIssue` without rewording it.
"""

from __future__ import annotations

import ipaddress
import math
import re

from meshpy.model import unix_address
from meshpy.model.types import Address

# Go/Envoy-style durations, optionally compound ("1m30s"). Longer unit names come first in the
# alternation so that "ms" is not read as "m" followed by a stray "s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "use seconds or a string like 250ms, 1.5s, 2m, 1h30m"

# Sizes: decimal (KB = 1000) and binary (KiB = 1024) units, case-insensitive because nobody means
# "millibits" in a proxy config. Kubernetes-style "Mi" is accepted as well.
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
}
_SIZE_HINT = "use bytes or a string like 64KiB, 10MiB, 1MB"

# One DNS label: letters, digits, "-" inside, "_" tolerated because service names in the wild use it.
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


# What a Host header or :authority may be (RFC 3986 reg-name, IPv4 or IP-literal, an optional port),
# the rule meshpy.codec.http1.valid_authority applies to requests: for a host that config writes into
# requests (host_rewrite), so that the proxy never sends a Host its own checks would refuse.
_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+;=%]+(?::[0-9]*)?|\[[0-9A-Fa-f:.]+\](?::[0-9]*)?")
# An RFC 9110 field name (a token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_authority(text: str) -> bool:
    return _AUTHORITY.fullmatch(text) is not None


def is_field_name(text: str) -> bool:
    """An RFC 9110 token; a pseudo-header (`:method`) when it starts with one colon."""
    return _TOKEN.fullmatch(text[1:] if text.startswith(":") else text) is not None


def yaml_kind(value: object) -> str:
    """The YAML name of a parsed value's type, for messages like `expected a string, got a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like `250ms`, `1.5s`, `2m`, `1h30m`, `0`.

    Negative and non-finite values are rejected; callers that accept "off" handle it before calling,
    because what "off" means (no limit, or not allowed) depends on the field.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration, got a {yaml_kind(value)}; {_DURATION_HINT}")
    if isinstance(value, str):
        text = value.strip()
        seconds = _duration_from_text(text)
        if seconds is None:
            raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
    else:
        seconds = float(value)
        text = str(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration")
    if seconds < 0:
        raise ValueError(f"duration {text} must not be negative")
    return seconds


def _duration_from_text(text: str) -> float | None:
    if text.startswith("-"):
        inner = _duration_from_text(text[1:])
        return None if inner is None else -inner
    try:
        return float(text)  # a bare number in a string: seconds, same as an unquoted number
    except ValueError:
        pass
    total, end = 0.0, 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != end:
            return None
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        end = part.end()
    return total if end == len(text) and end > 0 else None


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like `1024`, `64KiB`, `10MiB`, `1.5MB`."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size, got a {yaml_kind(value)}; {_SIZE_HINT}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a size; {_SIZE_HINT}")
        unit = match.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(f"unknown size unit {match.group(2)!r} in {value!r}; {_SIZE_HINT}")
        exact = float(match.group(1)) * _SIZE_UNITS[unit]
        if exact != int(exact):
            raise ValueError(f"{value!r} is not a whole number of bytes")
        size = int(exact)
    if size < 0:
        raise ValueError(f"size {value} must not be negative")
    return size


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address (IPv6 without brackets), False for a host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_address(value: object, *, allow_port_zero: bool = False, any_host: str = "0.0.0.0",
                  allow_unix: bool = False) -> Address:
    """An `Address` from `127.0.0.1:8080`, `[::1]:8080`, `localhost:80` or `:8080` (meaning `any_host`),
    and where the caller can use one (`allow_unix`), a Unix socket: `unix:/run/app.sock`, `unix:@name`.

    Port 0 ("let the kernel pick") only makes sense for something that listens, so callers opt in.
    IPv6 hosts are normalised (`[0:0::1]` becomes `::1`) and names lower-cased so that two spellings
    of one address compare equal when listeners are checked for clashes.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:8080 or :8080), got a {yaml_kind(value)}")
    text = value.strip()
    if text.startswith(unix_address.PREFIX):
        if not allow_unix:
            raise ValueError(f"{value!r}: a Unix socket cannot be used here; expected host:port")
        return unix_address.parse_unix(text)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not host:port; write IPv6 addresses as [::1]:8080")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} has no port; expected host:port (e.g. 127.0.0.1:8080)")
        if ":" in host:
            raise ValueError(f"{value!r}: IPv6 addresses need brackets, e.g. [::1]:8080")
        host = _check_host(host.lower()) if host else any_host
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    if port == 0 and not allow_port_zero:
        raise ValueError("port 0 is only allowed for listener addresses")
    return Address(host=host, port=port)


def _check_host(host: str) -> str:
    if host.replace(".", "").isdigit():
        # Looks like IPv4: hold it to IPv4 rules instead of accepting "300.1.1.1" as a host name.
        if not is_ip_literal(host):
            raise ValueError(f"{host!r} is not an IPv4 address")
        return host
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name")
    return host
