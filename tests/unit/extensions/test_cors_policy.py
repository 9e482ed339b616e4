"""The CORS filter's policy (meshpy.extensions.cors): the config checks, origin matching as Envoy's
StringMatcher does it, the fractions, and how the levels' policies merge."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from google.protobuf import json_format

from meshpy.extensions.cors import Cors, Policy, check_policy, merged
from meshpy.runtime.snapshot import EMPTY
from meshpy.xds.translate_base import Issues


def policy(**fields: Any) -> Policy:
    msg = cors_pb2.CorsPolicy()
    json_format.ParseDict(fields, msg)
    return Policy(msg)


def problems(**fields: Any) -> list[tuple[str, str]]:
    msg = cors_pb2.CorsPolicy()
    json_format.ParseDict(fields, msg)
    issues = Issues()
    check_policy(issues, msg, "p")
    return [(i.path, i.reason) for i in issues.items]


def test_each_matcher_kind_against_the_origin() -> None:
    p = policy(allow_origin_string_match=[
        {"exact": "https://a.example"}, {"prefix": "https://p."}, {"suffix": ".s.example"},
        {"contains": "mid"}, {"safe_regex": {"regex": r"https://[0-9]+\.r\.example"}}])
    for allowed in ("https://a.example", "https://p.x", "http://x.s.example", "amidb", "https://42.r.example"):
        assert p.allows(allowed), allowed
    # Case matters unless ignore_case; a regex must match the whole origin (RE2's FullMatch).
    for refused in ("https://A.example", "HTTPS://p.x", "x.S.example", "https://42.r.example.evil",
                    "https://a.example,https://a.example"):
        assert not p.allows(refused), refused


def test_ignore_case_folds_ascii_only_as_envoy_does() -> None:
    p = policy(allow_origin_string_match=[{"exact": "https://a.example", "ignore_case": True},
                                          {"suffix": "\u00e0.example", "ignore_case": True}])
    assert p.allows("HTTPS://A.EXAMPLE")
    # The origin arrives as bytes (latin-1 text here): "à" is the UTF-8 bytes C3 A0, and Envoy folds
    # no byte outside ASCII (str.lower() would take the byte E3 for C3).
    assert p.allows("x\u00c3\u00a0.example") and not p.allows("x\u00e3\u00a0.example")


def test_a_matcher_that_matches_star_allows_every_origin() -> None:
    # Envoy asks every matcher about "*" too: grpc-web's `prefix: "*"` allows any origin.
    assert policy(allow_origin_string_match=[{"prefix": "*"}]).allows("https://anything.example")
    assert policy(allow_origin_string_match=[{"safe_regex": {"regex": ".*"}}]).allow_all
    assert not policy(allow_origin_string_match=[{"exact": "https://a.example"}]).allow_all
    assert not policy().allows("https://a.example")  # no matcher: no origin


def test_fractions_are_the_default_values() -> None:
    """Without a runtime layer (the runtime's own tests cover keys: test_runtime_flags)."""
    req: Any = SimpleNamespace(runtime=EMPTY)
    assert policy().enabled.on(req) and not policy().shadow.on(req)
    off = policy(filter_enabled={"default_value": {"numerator": 0}},
                 shadow_enabled={"default_value": {"numerator": 100}, "runtime_key": "cors.shadow"})
    assert not any(off.enabled.on(req) for _ in range(50)) and all(off.shadow.on(req) for _ in range(50))
    over = policy(filter_enabled={"default_value": {"numerator": 20, "denominator": "TEN_THOUSAND"}})
    assert sum(over.enabled.on(req) for _ in range(20000)) in range(10, 90)  # 0.2%: 40 expected
    half = policy(filter_enabled={"default_value": {"numerator": 500_000, "denominator": "MILLION"}})
    assert sum(half.enabled.on(req) for _ in range(2000)) in range(850, 1150)


def test_header_values_go_out_as_their_utf8_bytes() -> None:
    p = policy(allow_methods="GET", max_age="\u00e9t\u00e9", expose_headers="x-a, x-b")
    assert p.methods == "GET" and p.expose == "x-a, x-b"
    assert p.max_age.encode("latin-1") == "\u00e9t\u00e9".encode()


def test_forward_not_matching_preflights_is_true_unless_set() -> None:
    assert policy().forward and not policy(forward_not_matching_preflights=False).forward
    assert policy(forward_not_matching_preflights=True).forward


def test_what_the_checks_refuse() -> None:
    assert problems(allow_origin_string_match=[{"prefix": ""}, {"ignore_case": True},
                                               {"safe_regex": {"regex": "(a"}}]) == [
        ("p.allow_origin_string_match[0].prefix", "must not be empty"),
        ("p.allow_origin_string_match[1]",
         "one of exact, prefix, suffix, contains or safe_regex is required"),
        ("p.allow_origin_string_match[2].safe_regex.regex",
         "invalid regex: missing ), unterminated subpattern at position 0")]
    assert problems(allow_headers="a\r\nx-evil: 1") == [
        ("p.allow_headers", "is not a valid header value (CR, LF or NUL)")]
    assert problems(filter_enabled={"runtime_key": "k"}) == [
        ("p.filter_enabled.default_value", "is required")]
    assert problems(shadow_enabled={"default_value": {"numerator": 1, "denominator": 7}}) == [
        ("p.shadow_enabled.default_value.denominator", "unknown value 7")]
    assert problems(allow_origin_string_match=[{"exact": ""}], filter_enabled={
        "default_value": {"numerator": 5}, "runtime_key": "cors.on"}) == []  # as Envoy takes them


def test_levels_merge_field_by_field_the_route_first() -> None:
    vhost = {"allow_origin_string_match": [{"exact": "https://a.example"}], "allow_methods": "GET",
             "max_age": "60", "allow_credentials": True,
             "filter_enabled": {"default_value": {"numerator": 0}}}
    route = {"allow_methods": "PUT", "expose_headers": "x-r", "allow_credentials": False,
             "allow_headers": ""}  # (an empty string is unset, in Envoy's reading)
    assert merged(vhost, route) == {
        "allow_origin_string_match": [{"exact": "https://a.example"}], "allow_methods": "PUT",
        "max_age": "60", "allow_credentials": False, "expose_headers": "x-r"}
    # filter_enabled and shadow_enabled are read of the most specific level only.
    assert "filter_enabled" in merged(route, vhost)
    assert merged(vhost, {"shadow_enabled": {"default_value": {}}}) == {
        **{k: v for k, v in vhost.items() if k != "filter_enabled"}, "shadow_enabled": {"default_value": {}}}


def test_route_config_stacks_the_levels_under_policy() -> None:
    first = Cors.route_config({}, {"allow_methods": "GET", "max_age": "5"})
    assert first == {"policy": {"allow_methods": "GET", "max_age": "5"}}
    assert Cors.route_config(first, {"max_age": "9"}) == {"policy": {"allow_methods": "GET", "max_age": "9"}}
    made = Cors(Cors.route_config(first, {"max_age": "9"}))
    assert made.policy is not None and made.policy.max_age == "9" and made.policy.methods == "GET"
    assert Cors({}).policy is None  # the listener's Cors alone: nothing to do


@pytest.mark.parametrize("config", [{"allow_methods": "GET"}, {"policy": [1]},
                                    {"policy": {"allow_origin_string_match": [{"prefix": ""}]}}])
def test_a_bad_config_is_refused_when_the_filter_is_made(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Cors(config)
