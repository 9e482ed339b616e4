"""Envoy's compressor filter: the choice of a coding from Accept-Encoding among the compressor filters
of a chain (Envoy's chooseEncoding, case by case), the config's checks and defaults, and the merge of
a per-route config."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from google.protobuf import json_format

from meshpy.extensions import compressor as comp
from meshpy.extensions.compressor import DEFAULT_TYPES, Compressor, choose
from meshpy.extensions.runtime_flags import Flag
from meshpy.filters import Response
from meshpy.xds.translate_base import Issues

LIB = "type.googleapis.com/envoy.extensions.compression.{0}.compressor.v3.{1}"
GZIP = {"name": "g", "typed_config": {"@type": LIB.format("gzip", "Gzip")}}
BROTLI = {"name": "b", "typed_config": {"@type": LIB.format("brotli", "Brotli")}}
ZSTD = {"name": "z", "typed_config": {"@type": LIB.format("zstd", "Zstd")}}



def on(switch: Flag | None) -> bool:
    """A direction's switch as configured (its runtime key aside): None is off."""
    return switch is not None and switch.default

def make(library: dict[str, Any] = GZIP, **config: Any) -> Compressor:
    return Compressor({"compressor_library": library, **config})


def issues_of(config: dict[str, Any]) -> list[str]:
    msg = compressor_pb2.Compressor()
    json_format.ParseDict(config, msg)
    issues = Issues()
    comp.check(issues, msg, "f")
    return [f"{i.path}: {i.reason}" for i in issues.items]


# -- the choice of a coding --------------------------------------------------------------------------
@pytest.mark.parametrize(("accept", "chosen"), [
    ("gzip", "gzip"),
    ("br", "br"),
    ("gzip, br", "gzip"),  # equal q: the first the client names
    ("gzip;q=0.5, br", "br"),
    ("br;q=0.5, gzip;q=0.8, zstd;q=0.9", "zstd"),
    ("deflate", "identity"),  # nothing in common
    ("identity", "identity"),
    ("identity, gzip;q=0.5", "identity"),
    ("*", "gzip"),  # the first filter of the chain
    ("*;q=0.5, br", "br"),
    ("gzip;q=0, *", "br"),  # refused by name, so `*` is the next one
    ("*;q=0", "identity"),
    ("gzip;q=0", "identity"),
    ("GZIP", "identity"),  # Envoy compares codings case-sensitively
    ("gzip;Q=0.5, br;q=0.4", "gzip"),  # but the parameter name not
    ("gzip;q=abc, br;q=0.1", "br"),  # a q that is not a number: the token is passed over
    ("gzip;level=1", "gzip"),  # another parameter: q stays 1
    ("gzip;q=0.5;x=1, br;q=0.1", "br"),  # "0.5;x=1" is not a number
    ("gzip;q=1_0, br;q=0.1", "br"),  # nor is this (Python would read 10)
    (",, gzip", "gzip"),
    ("", "identity"),
    ("gzip;q=nan, br;q=0.1", "br"),
    ("gzip;q=-1", "identity"),
])
def test_the_coding_chosen_from_accept_encoding(accept: str, chosen: str) -> None:
    chain = [make(GZIP), make(BROTLI), make(ZSTD)]
    assert choose(accept, chain, "text/plain") == chosen


def test_choose_first_breaks_ties_and_a_coding_counts_once() -> None:
    chain = [make(GZIP), make(BROTLI, choose_first=True)]
    assert choose("gzip, br", chain, None) == "br"
    assert choose("gzip;q=0.9, br;q=0.8", chain, None) == "gzip"  # q-values come first
    # A second gzip filter (another level, say) is passed over: the first one's choose_first counts.
    chain = [make(GZIP), make(GZIP, choose_first=True), make(BROTLI)]
    assert choose("br, gzip", chain, None) == "br"


def test_filters_whose_content_types_refuse_the_response_are_left_out() -> None:
    html_gzip = make(GZIP, response_direction_config={"common_config": {"content_type": ["text/html"]}})
    chain = [html_gzip, make(BROTLI)]
    assert choose("gzip, br;q=0.5", chain, "application/json") == "br"
    assert choose("gzip, br;q=0.5", chain, "TEXT/HTML; charset=utf-8") == "gzip"
    assert choose("*", chain, "application/json") == "br"
    assert choose("gzip, br;q=0.5", chain, None) == "gzip"  # no content type: every filter counts


def test_wildcard_ties_follow_envoys_map() -> None:
    # "*" tied with itself is added to Envoy's map with registration 0, and sorts before "gzip".
    assert choose("*;q=0.5, *;q=0.5, br;q=0.1", [make(GZIP)], None) == "*"
    assert choose("*;q=0.5, br;q=0.1", [make(GZIP)], None) == "gzip"


# -- config ------------------------------------------------------------------------------------------
def test_defaults() -> None:
    f = make()
    assert (f.encoding, on(f.response_on), f.min_length, f.types) == ("gzip", True, 30, DEFAULT_TYPES)
    assert not on(f.request_on) and not f.no_etag and not f.remove_accept and not f.uncompressible
    assert "application/grpc-web+proto" in f.types and len(f.types) == 20


def test_the_older_top_level_fields_apply_without_response_direction_config() -> None:
    f = make(content_length=100, content_type=["Text/HTML"], disable_on_etag_header=True,
             remove_accept_encoding_header=True, runtime_enabled={"default_value": False, "runtime_key": "k"})
    assert (f.min_length, f.types, f.no_etag, f.remove_accept, on(f.response_on)) == (
        100, frozenset({"text/html"}), True, True, False)
    # With response_direction_config, they are Envoy's to ignore.
    f = make(content_length=100, content_type=["text/html"], response_direction_config={})
    assert (f.min_length, f.types) == (30, DEFAULT_TYPES)


def test_request_direction_is_off_unless_given_and_on_once_given() -> None:
    assert on(make(request_direction_config={}).request_on)
    f = make(request_direction_config={"common_config": {
        "enabled": {"default_value": False}, "min_content_length": 5, "content_type": ["a/b"]}})
    assert (on(f.request_on), f.request_min_length, f.request_types) == (False, 5, frozenset({"a/b"}))


def test_library_options_are_checked_as_envoy_checks_them() -> None:
    gzip = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
    assert issues_of({"compressor_library": {"name": "g", "typed_config": {
        "@type": gzip, "window_bits": 8, "memory_level": 10, "chunk_size": 1024}}}) == [
        "f.compressor_library.typed_config.memory_level: must be from 1 to 9, got 10",
        "f.compressor_library.typed_config.window_bits: must be from 9 to 15, got 8",
        "f.compressor_library.typed_config.chunk_size: must be from 4096 to 65536, got 1024"]
    assert issues_of({"compressor_library": {"name": "b", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli",
        "quality": 12, "input_block_bits": 25}}}) == [
        "f.compressor_library.typed_config.quality: must be from 0 to 11, got 12",
        "f.compressor_library.typed_config.input_block_bits: must be from 16 to 24, got 25"]
    assert issues_of({"compressor_library": {"name": "z", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd",
        "dictionary": {"inline_string": "x"}}}}) == [
        "f.compressor_library.typed_config.dictionary: not supported by meshpy"]


def test_what_envoy_refuses_or_meshpy_does_not_do_is_an_issue() -> None:
    assert issues_of({}) == ["f.compressor_library: is required"]
    assert issues_of({"compressor_library": {"typed_config": GZIP["typed_config"]}}) == [
        "f.compressor_library.name: is required (at least 1 character)"]
    assert issues_of({"compressor_library": {"name": "d", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"}}}) == [
        "f.compressor_library.typed_config: envoy.extensions.compression.gzip.decompressor.v3.Gzip is not "
        "a compressor library meshpy has (gzip, brotli, zstd)"]
    assert issues_of({"compressor_library": GZIP, "response_direction_config": {
        "uncompressible_response_codes": [206, 600], "status_header_enabled": True,
        "common_config": {"enabled": {"runtime_key": "k"}}}}) == [
        "f.response_direction_config.status_header_enabled: not supported by meshpy",
        "f.response_direction_config.common_config.enabled.default_value: is required",
        "f.response_direction_config.uncompressible_response_codes[1]: must be from 200 to 599, got 600"]


def test_a_bad_config_refuses_the_class() -> None:
    with pytest.raises(ValueError, match="memory_level: must be from 1 to 9"):
        make({"name": "g", "typed_config": {**GZIP["typed_config"], "memory_level": 0}})


# -- per route ---------------------------------------------------------------------------------------
def merged(listener: dict[str, Any], route: dict[str, Any]) -> Compressor:
    return Compressor(Compressor.route_config(listener, route))


def test_per_route_disabled_turns_response_compression_off_only() -> None:
    listener = {"compressor_library": GZIP, "request_direction_config": {}, "content_type": ["text/html"]}
    f = merged(listener, {"disabled": True})
    assert (on(f.response_on), on(f.request_on), f.types) == (False, True, frozenset({"text/html"}))


def test_per_route_overrides() -> None:
    listener = {"compressor_library": GZIP, "response_direction_config": {
        "common_config": {"enabled": {"default_value": False, "runtime_key": "k"}, "min_content_length": 50}}}
    assert not on(Compressor(listener).response_on)
    f = merged(listener, {"overrides": {"response_direction_config": {}}})
    assert (on(f.response_on), f.min_length, f.remove_accept) == (True, 50, False)
    remove = {"remove_accept_encoding_header": True}
    f = merged(listener, {"overrides": {"response_direction_config": remove}})
    assert f.remove_accept and on(f.response_on)
    f = merged(listener, {"overrides": {"compressor_library": BROTLI}})
    assert (f.encoding, on(f.response_on)) == ("br", False)


def test_per_route_checks() -> None:
    def route_issues(config: dict[str, Any]) -> list[str]:
        msg = compressor_pb2.CompressorPerRoute()
        json_format.ParseDict(config, msg)
        issues = Issues()
        assert comp.route_check(issues, msg, "r") is False  # never takes the filter off the chain
        return [f"{i.path}: {i.reason}" for i in issues.items]

    assert route_issues({}) == ["r: one of disabled or overrides is required"]
    assert route_issues({"disabled": False}) == ["r.disabled: must be true"]
    assert route_issues({"disabled": True}) == []
    assert route_issues({"overrides": {"compressor_library": {"name": "x", "typed_config": {
        "@type": BROTLI["typed_config"]["@type"], "window_bits": 30}}}}) == [
        "r.overrides.compressor_library.typed_config.window_bits: must be from 10 to 24, got 30"]


# -- header helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("before", "after"), [
    ([], ["Accept-Encoding"]),
    (["origin"], ["origin, Accept-Encoding"]),
    (["Origin, Accept-Encoding"], ["Origin, Accept-Encoding"]),
    (["accept-encoding"], ["accept-encoding, Accept-Encoding"]),  # Envoy's match is case-sensitive
    (["a", "b"], ["a,b, Accept-Encoding"]),  # (Envoy holds two fields as one, joined)
])
def test_vary(before: list[str], after: list[str]) -> None:
    response = Response(200, [(b"vary", v.encode()) for v in before])
    comp._add_vary(response)
    assert response.headers.get_all("vary") == after


def test_content_length_content_type_and_transfer_encoding_tests() -> None:
    assert comp._long_enough(None, 30) and comp._long_enough("30", 30)
    assert not comp._long_enough("29", 30) and not comp._long_enough("x", 30) and not comp._long_enough("", 1)
    assert comp._type_allowed(None, DEFAULT_TYPES)
    assert comp._type_allowed("Text/Plain; charset=x", DEFAULT_TYPES)
    assert not comp._type_allowed("", DEFAULT_TYPES) and not comp._type_allowed("image/png", DEFAULT_TYPES)
    assert comp.no_transform(["max-age=1, No-Transform"]) and not comp.no_transform(["no-transformx"])
    assert comp._transfer_allowed(None, "br") and comp._transfer_allowed("chunked", "br")
    assert not comp._transfer_allowed("gzip, chunked", "br")
    assert not comp._transfer_allowed("x-mine", "x-mine")
