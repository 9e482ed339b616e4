"""The cache filter's store (meshpy.extensions.cache_store) and config: keys and Vary as Envoy's
SimpleHttpCache keeps them, the bound in bytes (least recently used out first, an entry over the
per-entry limit never in), and the config's checks and defaults."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.cache.v3 import cache_pb2
from envoy.extensions.http.cache.file_system_http_cache.v3 import file_system_http_cache_pb2
from google.protobuf import json_format

from meshpy.extensions import cache as cache_filter
from meshpy.extensions.cache import MAX_ENTRY, Cache, CacheOff
from meshpy.extensions.cache_store import Entry, Store
from meshpy.xds.translate_base import Issues

KEY = ("http", "example.com", "/a")
SIMPLE_TYPE = "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
SIMPLE = {"@type": f"type.googleapis.com/{SIMPLE_TYPE}"}


def allowed(name: str) -> bool:
    return name in ("accept-language", "x-v")


def entry(body: bytes = b"x", *headers: tuple[str, str]) -> Entry:
    return Entry(200, [("cache-control", "max-age=9"), *headers], body, 0.0)


def test_a_plain_entry() -> None:
    store = Store(1 << 20, 1 << 10)
    assert store.lookup(KEY, [], allowed) is None
    e = entry()
    assert store.insert(KEY, e, [], allowed)
    assert store.lookup(KEY, [("accept-language", "fr")], allowed) is e
    assert store.lookup(("https", "example.com", "/a"), [], allowed) is None
    assert store.lookup(("http", "Example.com", "/a"), [], allowed) is None  # the host as sent


def test_varied_entries_and_their_marker() -> None:
    store = Store(1 << 20, 1 << 10)
    en, fr = entry(b"en", ("vary", "accept-language")), entry(b"fr", ("vary", "accept-language"))
    assert store.insert(KEY, en, [("accept-language", "en")], allowed)
    assert store.insert(KEY, fr, [("accept-language", "fr")], allowed)
    assert len(store) == 3  # the two and the marker at the bare key
    assert store.lookup(KEY, [("accept-language", "en")], allowed) is en
    assert store.lookup(KEY, [("accept-language", "fr")], allowed) is fr
    assert store.lookup(KEY, [], allowed) is None
    # An answer that varies on a header no longer allowed is neither stored nor found.
    assert not store.insert(KEY, entry(b"?", ("vary", "user-agent")), [], allowed)
    assert store.lookup(KEY, [("accept-language", "en")], lambda name: False) is None
    # A plain answer replaces the marker (the varied ones are then out of reach) ...
    plain = entry(b"plain")
    store.insert(KEY, plain, [], allowed)
    assert store.lookup(KEY, [("accept-language", "en")], allowed) is plain
    # ... and a varied answer does not replace a plain one, as in Envoy's SimpleHttpCache.
    store.insert(KEY, entry(b"de", ("vary", "accept-language")), [("accept-language", "de")], allowed)
    assert store.lookup(KEY, [("accept-language", "de")], allowed) is plain


def test_the_store_is_bounded_in_bytes() -> None:
    one = entry(b"a" * 1000)
    store = Store(3 * one.size, 2000)
    for i in range(3):
        assert store.insert(("http", "h", f"/{i}"), entry(b"a" * 1000), [], allowed)
    assert store.used == 3 * one.size
    store.lookup(("http", "h", "/0"), [], allowed)  # now the most recently used
    store.insert(("http", "h", "/3"), entry(b"a" * 1000), [], allowed)
    assert store.used <= store.capacity and len(store) == 3
    assert store.lookup(("http", "h", "/1"), [], allowed) is None  # the least recently used went
    assert store.lookup(("http", "h", "/0"), [], allowed) is not None
    assert not store.insert(("http", "h", "/big"), entry(b"a" * 2001), [], allowed)  # over the entry limit
    assert store.lookup(("http", "h", "/big"), [], allowed) is None


def test_a_refresh_keeps_the_accounts() -> None:
    store = Store(1 << 20, 1 << 10)
    e = entry()
    store.insert(KEY, e, [], allowed)
    before = store.used
    found = store.entry_for(KEY, [], allowed)
    assert found is e
    store.refresh(e, [*e.headers, ("x-new", "1" * 100)], 5.0)
    assert store.used == before + 4 + len("x-new") + 100
    assert e.response_time == 5.0 and ("x-new", "1" * 100) in e.headers


def issues_of(config: dict[str, Any]) -> list[str]:
    msg = cache_pb2.CacheConfig()
    json_format.ParseDict(config, msg)
    issues = Issues()
    cache_filter.check(issues, msg, "f")
    return [f"{i.path}: {i.reason}" for i in issues.items]


def test_config_checks() -> None:
    assert issues_of({"typed_config": SIMPLE}) == []
    assert issues_of({"typed_config": SIMPLE, "allowed_vary_headers": [{"exact": "x"}], "max_body_bytes": 5,
                      "ignore_request_cache_control_header": True,
                      "key_creator_params": {"exclude_host": True}}) == []
    assert issues_of({}) == ["f.typed_config: is required unless disabled is true (as in Envoy)"]
    assert issues_of({"disabled": True}) == []
    fs_type = file_system_http_cache_pb2.FileSystemHttpCacheConfig.DESCRIPTOR.full_name
    fs = {"@type": f"type.googleapis.com/{fs_type}", "manager_config": {}, "cache_path": "/c"}
    assert issues_of({"typed_config": fs}) == [
        f"f.typed_config: {fs_type} is not supported by meshpy (only {SIMPLE_TYPE})"]
    assert issues_of({"typed_config": SIMPLE, "allowed_vary_headers": [{"safe_regex": {"regex": "(a"}}]})


def test_the_classes_a_config_makes() -> None:
    made = Cache({"typed_config": SIMPLE})
    assert made.store.max_entry == MAX_ENTRY and len(made.store) == 0
    assert Cache({"typed_config": SIMPLE, "max_body_bytes": 10}).store.max_entry == 10
    off = cache_pb2.CacheConfig(disabled={"value": True})
    assert cache_filter.EXTENSION.choose is not None
    assert cache_filter.EXTENSION.choose(off).endswith(":CacheOff")
    assert cache_filter.EXTENSION.choose(cache_pb2.CacheConfig()).endswith(":Cache")
    CacheOff({"disabled": True})
    with pytest.raises(ValueError, match="typed_config"):
        Cache({})
