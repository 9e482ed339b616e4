"""Envoy's decompressor filter: its config checks and defaults, the Accept-Encoding it advertises
upstream (the forms measured against Envoy 1.40), and what it does to content-encoding."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from envoy.extensions.filters.http.decompressor.v3 import decompressor_pb2
from google.protobuf import json_format

from meshpy.extensions import decompressor as dec
from meshpy.extensions.decompressor import Decompressor
from meshpy.filters import Headers
from meshpy.runtime.snapshot import EMPTY
from meshpy.xds.translate_base import Issues

LIB = "type.googleapis.com/envoy.extensions.compression.{0}.decompressor.v3.{1}"
GZIP = {"name": "up", "typed_config": {"@type": LIB.format("gzip", "Gzip")}}



NO_RUNTIME: Any = SimpleNamespace(runtime=EMPTY)  # a request as the switches see it, without a runtime

def make(library: dict[str, Any] = GZIP, **config: Any) -> Decompressor:
    return Decompressor({"decompressor_library": library, **config})


def issues_of(config: dict[str, Any]) -> list[str]:
    msg = decompressor_pb2.Decompressor()
    json_format.ParseDict(config, msg)
    issues = Issues()
    dec.check(issues, msg, "f")
    return [f"{i.path}: {i.reason}" for i in issues.items]


def headers(*fields: tuple[str, str]) -> Headers:
    return Headers([(n.encode(), v.encode()) for n, v in fields])


def test_defaults_and_directions() -> None:
    f = make()
    on = (f.request.on.default, f.response.on.default)
    assert (f.encoding, *on, f.advertise) == ("gzip", True, True, True)
    f = make({"name": "b", "typed_config": {"@type": LIB.format("brotli", "Brotli")}},
             request_direction_config={"advertise_accept_encoding": False,
                                       "common_config": {"enabled": {"default_value": False}}},
             response_direction_config={"common_config": {
                 "ignore_no_transform_header": True, "enabled": {"default_value": True, "runtime_key": "k"}}})
    on = (f.request.on.default, f.response.on.default)
    assert (f.encoding, *on, f.advertise) == ("br", False, True, False)
    assert f.response.ignore_no_transform and not f.request.ignore_no_transform


def test_checks() -> None:
    assert issues_of({}) == ["f.decompressor_library: is required"]
    assert issues_of({"decompressor_library": {"name": "x", "typed_config": {
        "@type": LIB.format("gzip", "Gzip"), "max_inflate_ratio": 2000, "window_bits": 16}}}) == [
        "f.decompressor_library.typed_config.window_bits: must be from 9 to 15, got 16",
        "f.decompressor_library.typed_config.max_inflate_ratio: must be from 1 to 1032, got 2000"]
    assert issues_of({"decompressor_library": {"name": "x", "typed_config": {
        "@type": LIB.format("brotli", "Brotli"), "disable_ring_buffer_reallocation": True}}}) == [
        "f.decompressor_library.typed_config.disable_ring_buffer_reallocation: not supported by meshpy"]
    assert issues_of({"decompressor_library": {"name": "x", "typed_config": {
        "@type": LIB.format("zstd", "Zstd"), "dictionaries": [{"inline_string": "d"}]}}}) == [
        "f.decompressor_library.typed_config.dictionaries: not supported by meshpy"]
    assert issues_of({"decompressor_library": GZIP, "response_direction_config": {
        "common_config": {"enabled": {"runtime_key": "k"}}}}) == [
        "f.response_direction_config.common_config.enabled.default_value: is required"]
    with pytest.raises(ValueError, match="chunk_size: must be from 4096 to 65536"):
        make({"name": "x", "typed_config": {"@type": LIB.format("zstd", "Zstd"), "chunk_size": 100}})


@pytest.mark.parametrize(("given", "sent"), [
    (None, "gzip"),
    ("", "gzip"),
    ("gzip", "gzip"),
    ("gzip;q=0.5", "gzip"),  # the client's own entry for the coding is replaced
    ("gzip ;q=0.1", "gzip"),
    ("deflate ,  gzip;q=0", "deflate,gzip"),
    ("deflate, GZIP", "deflate,GZIP,gzip"),  # Envoy's match is case-sensitive
    ("deflate ,  br;q=0.5", "deflate,br;q=0.5,gzip"),
    ("br,,  ,deflate", "br,deflate,gzip"),
    ("a;b=c, gzip ", "a;b=c,gzip"),
    ("*", "*,gzip"),
])
def test_advertised_accept_encoding(given: str | None, sent: str) -> None:
    h = headers(*([("accept-encoding", given)] if given is not None else []))
    make()._advertise(h)
    assert h.get_all("accept-encoding") == [sent]


def test_two_accept_encoding_fields_are_one_list() -> None:
    h = headers(("accept-encoding", "br"), ("accept-encoding", "deflate"))
    make()._advertise(h)
    assert h.get_all("accept-encoding") == ["br,deflate,gzip"]


@pytest.mark.parametrize(("fields", "decoded", "left"), [
    ([("content-encoding", "gzip")], True, None),
    ([("content-encoding", " GZip ")], True, None),
    ([("content-encoding", "gzip, br")], True, "br"),  # the first coding is taken off
    ([("content-encoding", "br, gzip")], False, "br, gzip"),  # the first must be the library's
    ([("content-encoding", "gzip,")], True, ""),
    ([], False, None),
    ([("content-encoding", "gzip"), ("cache-control", "max-age=3, no-transform")], False, "gzip"),
])
def test_content_encoding(fields: list[tuple[str, str]], decoded: bool, left: str | None) -> None:
    f = make()
    h = headers(*fields)
    assert (f._decoder(f.response, h, NO_RUNTIME) is not None) == decoded
    assert h.get("content-encoding") == left


def test_no_transform_may_be_ignored_and_a_direction_turned_off() -> None:
    f = make(response_direction_config={"common_config": {"ignore_no_transform_header": True}},
             request_direction_config={"common_config": {"enabled": {"default_value": False}}})
    fields = [("content-encoding", "gzip"), ("cache-control", "no-transform")]
    assert f._decoder(f.response, headers(*fields), NO_RUNTIME) is not None
    assert f._decoder(f.request, headers(*fields), NO_RUNTIME) is None
