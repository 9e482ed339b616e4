"""The human-sized value parsers shared by every config reader: durations, sizes, addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpy.model.types import Address
from meshpy.model.yaml_values import is_ip_literal, parse_address, parse_duration, parse_size, yaml_kind


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("0", 0.0),
        ("30", 30.0),
        (" 5s ", 5.0),
        ("100us", 0.0001),
        (".5s", 0.5),
        (0, 0.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts_numbers_and_units(written: object, seconds: float) -> None:
    assert parse_duration(written) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("5 sec", "'5 sec' is not a duration; use seconds or a string like 250ms, 1.5s, 2m, 1h30m"),
        ("s", "'s' is not a duration; use seconds or a string like 250ms, 1.5s, 2m, 1h30m"),
        ("1d", "'1d' is not a duration; use seconds or a string like 250ms, 1.5s, 2m, 1h30m"),
        ("", "'' is not a duration; use seconds or a string like 250ms, 1.5s, 2m, 1h30m"),
        ("-1s", "duration -1s must not be negative"),
        (-3, "duration -3 must not be negative"),
        (True, "expected a duration, got a boolean; use seconds or a string like 250ms, 1.5s, 2m, 1h30m"),
        ([1], "expected a duration, got a list; use seconds or a string like 250ms, 1.5s, 2m, 1h30m"),
        (float("inf"), "inf is not a finite duration"),
        ("nan", "'nan' is not a finite duration"),
    ],
)
def test_parse_duration_rejects_with_a_reason(written: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(written)
    assert str(info.value) == reason


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_duration_scales_every_unit(amount: int, unit: str) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * scale)


@pytest.mark.parametrize(
    ("written", "size"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("64KiB", 65536),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("1KB", 1000),
        ("10MB", 10_000_000),
        ("16Mi", 16 * 1024**2),
        ("10mib", 10 * 1024**2),
        ("1.5KiB", 1536),
        ("512 B", 512),
        (0, 0),
    ],
)
def test_parse_size_accepts_decimal_and_binary_units(written: object, size: int) -> None:
    assert parse_size(written) == size


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        (
            "10 parsecs",
            "unknown size unit 'parsecs' in '10 parsecs'; use bytes or a string like 64KiB, 10MiB, 1MB",
        ),
        ("MiB", "'MiB' is not a size; use bytes or a string like 64KiB, 10MiB, 1MB"),
        ("0.3KiB", "'0.3KiB' is not a whole number of bytes"),
        (-1, "size -1 must not be negative"),
        (1.5, "expected a size, got a number; use bytes or a string like 64KiB, 10MiB, 1MB"),
        (False, "expected a size, got a boolean; use bytes or a string like 64KiB, 10MiB, 1MB"),
    ],
)
def test_parse_size_rejects_with_a_reason(written: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(written)
    assert str(info.value) == reason


@given(st.integers(min_value=0, max_value=2**40))
def test_parse_size_round_trips_bytes_and_kib(size: int) -> None:
    assert parse_size(size) == size
    assert parse_size(str(size)) == size
    assert parse_size(f"{size}KiB") == size * 1024


@pytest.mark.parametrize(
    ("written", "address"),
    [
        ("127.0.0.1:8080", Address(host="127.0.0.1", port=8080)),
        ("[::1]:8080", Address(host="::1", port=8080)),
        ("[0:0::1]:8080", Address(host="::1", port=8080)),
        ("localhost:80", Address(host="localhost", port=80)),
        ("LocalHost:80", Address(host="localhost", port=80)),
        (":8080", Address(host="0.0.0.0", port=8080)),
        ("orders.shop.svc.cluster.local:8080", Address(host="orders.shop.svc.cluster.local", port=8080)),
        ("my_service:1", Address(host="my_service", port=1)),
        ("10.0.0.1:65535", Address(host="10.0.0.1", port=65535)),
    ],
)
def test_parse_address_forms(written: str, address: Address) -> None:
    assert parse_address(written) == address


def test_parse_address_port_zero_is_only_for_listeners() -> None:
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == Address(host="127.0.0.1", port=0)
    with pytest.raises(ValueError) as info:
        parse_address("127.0.0.1:0")
    assert str(info.value) == "port 0 is only allowed for listener addresses"


def test_parse_address_any_host_can_be_chosen() -> None:
    assert parse_address(":53", any_host="::") == Address(host="::", port=53)


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("127.0.0.1:70000", "port 70000 is out of range"),
        ("127.0.0.1", "'127.0.0.1' has no port; expected host:port (e.g. 127.0.0.1:8080)"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:", "port '' is not a number"),
        ("::1:8080", "'::1:8080': IPv6 addresses need brackets, e.g. [::1]:8080"),
        ("[::1]", "'[::1]' is not host:port; write IPv6 addresses as [::1]:8080"),
        ("[::g]:80", "'::g' is not an IPv6 address"),
        ("300.1.1.1:80", "'300.1.1.1' is not an IPv4 address"),
        ("bad host:80", "'bad host' is not a valid host name"),
        ("-bad.example:80", "'-bad.example' is not a valid host name"),
        (8080, "expected host:port (e.g. 127.0.0.1:8080 or :8080), got a number"),
    ],
)
def test_parse_address_rejects_with_a_reason(written: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(written)
    assert str(info.value) == reason


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_parse_address_round_trips_str_of_address(ip: object, port: int) -> None:
    address = Address(host=str(ip), port=port)
    assert parse_address(str(address)) == address


def test_is_ip_literal() -> None:
    assert is_ip_literal("127.0.0.1")
    assert is_ip_literal("::1")
    assert not is_ip_literal("localhost")
    assert not is_ip_literal("[::1]")


def test_yaml_kind_names_types_as_yaml_does() -> None:
    assert [yaml_kind(v) for v in (None, True, 1, 1.5, "x", [1], {"a": 1})] == [
        "null",
        "boolean",
        "number",
        "number",
        "string",
        "list",
        "mapping",
    ]
